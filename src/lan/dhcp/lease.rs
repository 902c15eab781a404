//! The one lease we hand out and the options that go with it, built once from the serving
//! configuration. Invalid search domains are dropped here, with a warning for the operator.

use std::net::Ipv4Addr;
use std::str::FromStr as _;

use dhcproto::Name;
use macaddr::MacAddr6;

use crate::config::DnsMode;
use crate::lan::Lan;

/// One hour, like dnsmasq: short enough that a changed option reaches the guest soon, long
/// enough that renewals are no load. T1 and T2 are RFC 2131 §4.4.5's defaults.
pub const LEASE_SECS: u32 = 3600;
pub const RENEW_SECS: u32 = LEASE_SECS / 2;
pub const REBIND_SECS: u32 = LEASE_SECS / 8 * 7;

/// The /30 shared by `VM_IP` and `VM_GW`.
pub const NETMASK: Ipv4Addr = crate::net::Slash30::NETMASK;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub vm_ip: Ipv4Addr,
    /// Our address: server identifier, router and (in `forward` mode) DNS server.
    pub server: Ipv4Addr,
    pub vm_mac: MacAddr6,
    pub mtu: u16,
    /// Option 12; `None` when the pod hostname is not a valid DNS name.
    pub hostname: Option<String>,
    pub dns: Vec<Ipv4Addr>,
    /// Option 15: the first search domain.
    pub domain: Option<String>,
    /// Option 119, in order.
    pub search: Vec<Name>,
}

impl Lease {
    /// The lease and the warnings an operator should see about it.
    pub fn from_config(cfg: &Lan) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let mut search = Vec::new();
        for domain in &cfg.resolv.search {
            match search_name(domain) {
                Some(name) => search.push(name),
                None => warnings.push(format!(
                    "search domain {domain:?} from the pod's resolv.conf is not a valid DNS \
                     name; it is left out of the DHCP search list"
                )),
            }
        }
        let domain = search
            .first()
            .map(|name| name.to_ascii().trim_end_matches('.').to_owned());
        let hostname = cfg.hostname.as_str();
        let hostname = if is_dns_label_sequence(hostname) {
            Some(hostname.to_owned())
        } else {
            warnings.push(format!(
                "the pod hostname {hostname:?} is not a valid DNS name; DHCP does not hand it out"
            ));
            None
        };
        let dns = match cfg.dns_mode {
            DnsMode::Forward => vec![cfg.vm_gw],
            DnsMode::Passthrough => {
                let servers = cfg.resolv.ipv4_nameservers();
                if servers.is_empty() {
                    warnings.push(
                        "DNS_MODE=passthrough but the pod's resolv.conf has no IPv4 nameserver; \
                         DHCP hands out no DNS server"
                            .to_owned(),
                    );
                }
                servers
            }
        };
        // Option 26 is 16 bits and RFC 2132 §5.1 sets the minimum at 68.
        let mtu = u16::try_from(cfg.mtu).unwrap_or(u16::MAX).max(68);
        let lease = Self {
            vm_ip: cfg.vm_ip,
            server: cfg.vm_gw,
            vm_mac: cfg.vm_mac,
            mtu,
            hostname,
            dns,
            domain,
            search,
        };
        (lease, warnings)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        crate::net::slash30::broadcast_of(self.vm_ip)
    }
}

/// Letters, digits and hyphens, labels of 1..=63 bytes not starting or ending with a hyphen,
/// at most 253 bytes in all (RFC 1035 §2.3.1, RFC 1123 §2.1).
fn is_dns_label_sequence(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn search_name(domain: &str) -> Option<Name> {
    if !is_dns_label_sequence(domain) {
        return None;
    }
    Name::from_str(&format!("{}.", domain.trim_end_matches('.'))).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Hostname;
    use crate::lan::ResolvConf;

    fn config(mode: DnsMode, resolv: &str, hostname: &str) -> Lan {
        Lan {
            bridge: "br0".into(),
            vm_ip: Ipv4Addr::new(192, 168, 254, 2),
            vm_gw: Ipv4Addr::new(192, 168, 254, 1),
            vm_mac: MacAddr6::new(0x52, 0x54, 0, 1, 2, 3),
            mtu: 9000,
            hostname: Hostname::parse(hostname).unwrap(),
            dns_mode: mode,
            resolv: ResolvConf::parse(resolv),
            no_dhcp: false,
            ipv6: None,
        }
    }

    #[test]
    fn forward_mode_hands_out_the_gateway_and_passthrough_the_pod_nameservers() {
        let resolv =
            "search a.example bad_label.example b.example\nnameserver 10.96.0.10\nnameserver ::1\n";
        let (lease, warnings) = Lease::from_config(&config(DnsMode::Forward, resolv, "vm-0"));
        assert_eq!(lease.dns, [Ipv4Addr::new(192, 168, 254, 1)]);
        assert_eq!(lease.domain.as_deref(), Some("a.example"));
        assert_eq!(lease.search.len(), 2);
        assert_eq!(lease.mtu, 9000);
        assert_eq!(lease.broadcast(), Ipv4Addr::new(192, 168, 254, 3));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let (lease, _) = Lease::from_config(&config(DnsMode::Passthrough, resolv, "vm-0"));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 96, 0, 10)]);
    }

    #[test]
    fn a_hostname_that_is_not_a_dns_name_is_not_handed_out() {
        let (lease, warnings) = Lease::from_config(&config(DnsMode::Forward, "", "vm_0"));
        assert_eq!(lease.hostname, None);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn accepts_ldh_names_and_rejects_the_rest() {
        assert!(is_dns_label_sequence("svc.cluster.local"));
        assert!(is_dns_label_sequence("vm-0"));
        assert!(!is_dns_label_sequence("-bad.example"));
        assert!(!is_dns_label_sequence("under_score.example"));
        assert!(!is_dns_label_sequence("a..b"));
        assert!(!is_dns_label_sequence(&"a".repeat(64)));
        assert!(search_name("cluster.local").is_some());
    }
}

//! The VM's IPv6 side (issue 23), decided without touching the host: the /64 on the bridge,
//! the VM's address in it, and whether the pod has IPv6 to share at all.
//!
//! The VM's default address is the one its kernel derives by SLAAC from its MAC (modified
//! EUI-64, RFC 4291 appendix A), so a guest that only runs SLAAC and one that asks DHCPv6 end
//! up on the same address, the one the ip6 DNAT targets.

use std::fmt;
use std::net::Ipv6Addr;

use macaddr::MacAddr6;

/// `IPV6` (auto) with `VM_GW6` and `VM_IP6`, validated (`IPV6=off` is no `Ip6Config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ip6Config {
    /// Our bridge's address; its /64 is the VM's.
    pub gw: Ipv6Addr,
    /// `None`: the VM MAC's EUI-64 address in the /64.
    pub vm: Option<Ipv6Addr>,
}

/// Why a `VM_GW6`/`VM_IP6` cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ip6Invalid {
    pub var: &'static str,
    pub addr: Ipv6Addr,
    pub reason: &'static str,
}

impl Ip6Config {
    /// Both must be unicast, routable-looking addresses of one /64, and differ.
    pub fn new(gw: Ipv6Addr, vm: Option<Ipv6Addr>) -> Result<Self, Ip6Invalid> {
        let check = |var: &'static str, addr: Ipv6Addr| match unusable(addr) {
            Some(reason) => Err(Ip6Invalid { var, addr, reason }),
            None => Ok(()),
        };
        check("VM_GW6", gw)?;
        if interface_id(gw) == 0 {
            return Err(Ip6Invalid {
                var: "VM_GW6",
                addr: gw,
                reason: "the /64's subnet-router anycast address (interface ID 0)",
            });
        }
        if let Some(vm) = vm {
            check("VM_IP6", vm)?;
            if Net64::of(vm) != Net64::of(gw) {
                return Err(Ip6Invalid {
                    var: "VM_IP6",
                    addr: vm,
                    reason: "not in VM_GW6's /64",
                });
            }
            if vm == gw || interface_id(vm) == 0 {
                return Err(Ip6Invalid {
                    var: "VM_IP6",
                    addr: vm,
                    reason: "VM_GW6 itself or the /64's anycast address",
                });
            }
        }
        Ok(Self { gw, vm })
    }

    pub fn net(&self) -> Net64 {
        Net64::of(self.gw)
    }

    /// The VM's address: `VM_IP6`, else the SLAAC (EUI-64) address of `mac` in the /64.
    pub fn vm_for(&self, mac: MacAddr6) -> Ipv6Addr {
        self.vm.unwrap_or_else(|| eui64(self.net(), mac))
    }
}

/// What makes `addr` unusable as an address on our bridge, if anything.
fn unusable(addr: Ipv6Addr) -> Option<&'static str> {
    let first = addr.segments()[0];
    if addr.is_unspecified() || addr.is_loopback() {
        Some("the unspecified or loopback address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address (the bridge has its own)")
    } else if addr.to_ipv4_mapped().is_some() {
        Some("an IPv4-mapped address")
    } else {
        None
    }
}

fn interface_id(addr: Ipv6Addr) -> u64 {
    (u128::from(addr) & u128::from(u64::MAX)) as u64
}

/// A /64, the only prefix length SLAAC works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net64(Ipv6Addr);

impl Net64 {
    pub const PREFIX: u8 = 64;

    pub fn of(addr: Ipv6Addr) -> Self {
        Self(Ipv6Addr::from(u128::from(addr) & !u128::from(u64::MAX)))
    }

    pub fn network(&self) -> Ipv6Addr {
        self.0
    }

    /// Whether this /64 and `addr/prefix` share an address.
    pub fn overlaps(&self, addr: Ipv6Addr, prefix: u8) -> bool {
        let shorter = prefix.min(Self::PREFIX);
        let mask = match shorter {
            0 => 0,
            n => u128::MAX << (128 - u32::from(n)),
        };
        u128::from(self.0) & mask == u128::from(addr) & mask
    }
}

impl fmt::Display for Net64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0, Self::PREFIX)
    }
}

/// The modified EUI-64 address of `mac` in `net`: what Linux (addr_gen_mode 0) and most
/// SLAAC clients derive.
pub(crate) fn eui64(net: Net64, mac: MacAddr6) -> Ipv6Addr {
    let m = mac.into_array();
    let id = [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
    Ipv6Addr::from(u128::from(net.network()) | u128::from(u64::from_be_bytes(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().expect("an IPv6 address")
    }

    #[test]
    fn eui64_is_what_the_kernel_derives() {
        let mac = MacAddr6::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
        assert_eq!(
            eui64(Net64::of(a("fd6b:766d::1")), mac),
            a("fd6b:766d::5054:ff:fe12:3456")
        );
    }

    #[test]
    fn the_vm_address_defaults_to_eui64_and_must_share_the_gateways_64() {
        let mac = MacAddr6::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
        let config = Ip6Config::new(a("fd00:1:2:3::1"), None).expect("valid");
        assert_eq!(config.vm_for(mac), a("fd00:1:2:3:5054:ff:fe12:3456"));
        assert_eq!(config.net().to_string(), "fd00:1:2:3::/64");
        let fixed = Ip6Config::new(a("fd00::1"), Some(a("fd00::2"))).expect("valid");
        assert_eq!(fixed.vm_for(mac), a("fd00::2"));
        for (gw, vm, var) in [
            ("fe80::1", None, "VM_GW6"),
            ("ff02::1", None, "VM_GW6"),
            ("::", None, "VM_GW6"),
            ("fd00::", None, "VM_GW6"),
            ("fd00::1", Some("fd00:0:0:1::2"), "VM_IP6"),
            ("fd00::1", Some("fd00::1"), "VM_IP6"),
            ("fd00::1", Some("::1"), "VM_IP6"),
        ] {
            let err = Ip6Config::new(a(gw), vm.map(a)).expect_err("invalid");
            assert_eq!(err.var, var, "{gw} {vm:?}");
        }
    }

    #[test]
    fn overlap_compares_the_shorter_prefix() {
        let net = Net64::of(a("fd00:10:244::1"));
        assert!(net.overlaps(a("fd00:10:244::5"), 64));
        assert!(net.overlaps(a("fd00:10::"), 32));
        assert!(net.overlaps(a("fd00:10:244::9"), 128));
        assert!(!net.overlaps(a("fd00:10:245::9"), 128));
        assert!(!net.overlaps(a("fd00:10:244:1::"), 64));
        assert!(net.overlaps(a("2001:db8::"), 0));
    }
}

//! The VM's /30: `VM_GW` (the bridge, the guest's router) and `VM_IP`, the two host addresses
//! of one block of four. Checked once, by [`Slash30::new`]; config, net and DHCP then carry the
//! checked pair instead of re-deriving masks.

use std::net::Ipv4Addr;

/// Two host addresses of one /30, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slash30 {
    gw: Ipv4Addr,
    vm: Ipv4Addr,
}

/// Why two addresses are not the host addresses of one /30; `var` is the one to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSlash30 {
    pub var: &'static str,
    pub addr: Ipv4Addr,
    pub reason: String,
}

impl Slash30 {
    pub const PREFIX: u8 = 30;
    pub const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 252);
    const HOST_BITS: u32 = 3;

    /// `vm` and `gw` must be unicast, differ, and be offsets 1 and 2 (either way round) of the
    /// same block of four.
    pub fn new(vm: Ipv4Addr, gw: Ipv4Addr) -> Result<Self, NotSlash30> {
        let reject = |var, addr, reason: &str| NotSlash30 {
            var,
            addr,
            reason: reason.to_owned(),
        };
        for (var, addr) in [("VM_IP", vm), ("VM_GW", gw)] {
            if addr.is_unspecified()
                || addr.is_loopback()
                || addr.is_multicast()
                || addr.is_broadcast()
            {
                return Err(reject(var, addr, "not a unicast address a NIC can have"));
            }
            match u32::from(addr) & Self::HOST_BITS {
                0 => return Err(reject(var, addr, "the network address of its /30")),
                3 => return Err(reject(var, addr, "the broadcast address of its /30")),
                _ => {}
            }
        }
        if vm == gw {
            return Err(reject("VM_IP", vm, "equal to VM_GW"));
        }
        if network_of(vm) != network_of(gw) {
            return Err(reject(
                "VM_IP",
                vm,
                &format!("not in the /30 of VM_GW={gw}"),
            ));
        }
        Ok(Self { gw, vm })
    }

    /// The VM's address.
    pub fn vm(self) -> Ipv4Addr {
        self.vm
    }

    /// The bridge's address: the guest's router.
    pub fn gw(self) -> Ipv4Addr {
        self.gw
    }

    /// The block as a network, for overlap checks and messages (`a.b.c.d/30`).
    pub fn net(self) -> Ipv4Net {
        Ipv4Net::new(self.vm, Self::PREFIX)
    }

    pub fn broadcast(self) -> Ipv4Addr {
        broadcast_of(self.vm)
    }
}

fn network_of(addr: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) & u32::from(Slash30::NETMASK))
}

/// The broadcast address of the /30 `addr` is in.
pub(crate) fn broadcast_of(addr: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) | !u32::from(Slash30::NETMASK))
}

/// An IPv4 network as address + prefix length, for overlap checks and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    fn mask(self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        }
    }

    /// The first address of the network.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Two prefixes overlap exactly when one contains the other's first address.
    pub fn overlaps(self, other: Ipv4Net) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_two_host_addresses_of_one_block_make_a_slash30() {
        let net = Slash30::new(ip("192.168.254.2"), ip("192.168.254.1")).expect("valid");
        assert_eq!(
            (net.vm(), net.gw()),
            (ip("192.168.254.2"), ip("192.168.254.1"))
        );
        assert_eq!(net.net().to_string(), "192.168.254.0/30");
        assert_eq!(net.broadcast(), ip("192.168.254.3"));
        let swapped = Slash30::new(ip("10.0.0.5"), ip("10.0.0.6")).expect("either way round");
        assert_eq!(swapped.net().to_string(), "10.0.0.4/30");
    }

    #[test]
    fn anything_else_names_the_address_to_fix() {
        let cases = [
            ("192.168.254.4", "192.168.254.1", "VM_IP", "network address"),
            (
                "192.168.254.2",
                "192.168.254.3",
                "VM_GW",
                "broadcast address",
            ),
            ("192.168.254.2", "192.168.254.2", "VM_IP", "equal to VM_GW"),
            ("192.168.254.6", "192.168.254.1", "VM_IP", "not in the /30"),
            ("127.0.0.2", "127.0.0.1", "VM_IP", "unicast"),
            ("0.0.0.0", "192.168.254.1", "VM_IP", "unicast"),
        ];
        for (vm, gw, var, reason) in cases {
            let err = Slash30::new(ip(vm), ip(gw)).expect_err(vm);
            assert_eq!(err.var, var, "{vm} {gw}");
            assert!(err.reason.contains(reason), "{vm} {gw}: {}", err.reason);
        }
    }
}

//! The VM's addresses and ports: `VM_IP`, `VM_GW`, `VM_MAC`, `NO_VNC`, `NO_DHCP`, `DNS_MODE`,
//! `HTTP_PORT`, `READY_PORT`, `NETWORK_MODE`, `IPV6`, `VM_IP6`, `VM_GW6`.

use std::net::{Ipv4Addr, Ipv6Addr};

use macaddr::MacAddr6;

use super::{choice, invalid, non_empty, ConfigError, DnsMode, NetConfig, NetworkMode, VNC_PORT};
use crate::cli::Settings;
use crate::net::Slash30;

/// The ports of our DNS forwarder and DHCP server on the bridge.
const DNS_PORT: u16 = 53;
const DHCP_PORT: u16 = 67;

pub(super) fn parse_net(settings: &Settings) -> Result<NetConfig, ConfigError> {
    let vm_ip = parse_ipv4("VM_IP", &settings.vm_ip)?;
    let vm_gw = parse_ipv4("VM_GW", &settings.vm_gw)?;
    let slash30 = check_slash30(vm_ip, vm_gw)?;
    let vm_mac = non_empty(&settings.vm_mac).map(parse_mac).transpose()?;
    let dns_mode = choice(
        "DNS_MODE",
        &settings.dns_mode,
        &[
            ("forward", DnsMode::Forward),
            ("passthrough", DnsMode::Passthrough),
        ],
    )?;
    let port: u16 = settings.http_port.trim().parse().map_err(|_| {
        invalid(
            "HTTP_PORT",
            &settings.http_port,
            "not a port number",
            "use 1-65535, or 0 to disable",
        )
    })?;
    if let Some(reason) = port_collision(port, settings.no_vnc) {
        let fix = if port == VNC_PORT {
            "choose another port (the default is 8080), or set NO_VNC"
        } else {
            "choose another port (the default is 8080)"
        };
        return Err(invalid("HTTP_PORT", &settings.http_port, reason, fix));
    }
    let ready_port = match settings.ready_port.trim().parse::<u16>() {
        Ok(port @ 1..) => port,
        _ => {
            return Err(invalid(
                "READY_PORT",
                &settings.ready_port,
                "not a port number",
                "use the guest TCP port (1-65535) that answers once it has booted, e.g. 22",
            ))
        }
    };
    let mode = choice(
        "NETWORK_MODE",
        &settings.network_mode,
        &[
            ("auto", NetworkMode::Auto),
            ("nat", NetworkMode::Nat),
            ("passt", NetworkMode::Passt),
        ],
    )?;
    Ok(NetConfig {
        slash30,
        vm_mac,
        no_vnc: settings.no_vnc,
        no_dhcp: settings.no_dhcp,
        dns_mode,
        http_port: (port != 0).then_some(port),
        ready_port,
        mode,
        ipv6: parse_ipv6(settings)?,
    })
}

// --- issue 23: IPv6 dual-stack in NAT mode ---
const IP6_FIX: &str = "VM_GW6 and VM_IP6 must be unicast addresses of one /64 that the pod \
     does not use (VM_IP6 may be left unset: the guest's SLAAC address), e.g. VM_GW6=fd6b:766d::1";

/// `IPV6=auto|off` and, for auto, `VM_GW6`/`VM_IP6` validated like `VM_GW`/`VM_IP`.
fn parse_ipv6(settings: &Settings) -> Result<Option<crate::net::ip6::Ip6Config>, ConfigError> {
    let on = choice("IPV6", &settings.ipv6, &[("auto", true), ("off", false)])?;
    if !on {
        return Ok(None);
    }
    let parse = |var: &'static str, raw: &str| -> Result<Ipv6Addr, ConfigError> {
        raw.trim()
            .parse()
            .map_err(|_| invalid(var, raw, "not an IPv6 address", IP6_FIX))
    };
    let gw = parse("VM_GW6", &settings.vm_gw6)?;
    let vm = non_empty(&settings.vm_ip6)
        .map(|raw| parse("VM_IP6", raw))
        .transpose()?;
    crate::net::ip6::Ip6Config::new(gw, vm)
        .map(Some)
        .map_err(|e| invalid(e.var, &e.addr.to_string(), e.reason, IP6_FIX))
}
// --- end issue 23 ---

/// Why `port` cannot be our HTTP port: the pod already uses it for the VM. Caught here,
/// because a clash found by `bind` comes after qemu started and points at the wrong cause.
fn port_collision(port: u16, no_vnc: bool) -> Option<&'static str> {
    match port {
        DNS_PORT => Some("our DNS forwarder serves the VM on port 53"),
        DHCP_PORT => Some("our DHCP server uses port 67"),
        VNC_PORT if !no_vnc => Some("qemu's VNC server uses port 5900"),
        _ => None,
    }
}

fn parse_ipv4(var: &'static str, raw: &str) -> Result<Ipv4Addr, ConfigError> {
    raw.trim().parse().map_err(|_| {
        invalid(
            var,
            raw,
            "not an IPv4 address",
            "write it as four decimal octets, e.g. 192.168.254.2",
        )
    })
}

const SLASH30_FIX: &str = "VM_IP and VM_GW must be the two host addresses of one /30 \
     (…1 and …2 of a block starting at a multiple of 4), e.g. VM_GW=192.168.254.1 VM_IP=192.168.254.2";

/// Both addresses must be the two host addresses (offsets 1 and 2) of one /30.
pub(crate) fn check_slash30(vm_ip: Ipv4Addr, vm_gw: Ipv4Addr) -> Result<Slash30, ConfigError> {
    Slash30::new(vm_ip, vm_gw)
        .map_err(|e| invalid(e.var, &e.addr.to_string(), e.reason, SLASH30_FIX))
}

fn parse_mac(raw: &str) -> Result<MacAddr6, ConfigError> {
    const FIX: &str = "use six hex bytes like 52:54:00:12:34:56 (unicast: even first byte), or \
                       unset it to derive a stable one from the hostname";
    let mac: MacAddr6 = raw
        .parse()
        .map_err(|_| invalid("VM_MAC", raw, "not a MAC address", FIX))?;
    if mac.is_nil() {
        return Err(invalid("VM_MAC", raw, "the all-zero address", FIX));
    }
    if mac.as_bytes()[0] & 1 == 1 {
        return Err(invalid("VM_MAC", raw, "a multicast address", FIX));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    fn parse(args: &[&str]) -> Result<NetConfig, ConfigError> {
        let argv = ["kvm-manager"].iter().chain(args);
        parse_net(
            &Cli::try_parse_from(argv)
                .expect("valid clap input")
                .settings,
        )
    }

    #[test]
    fn http_port_on_a_port_of_dns_dhcp_or_vnc_is_rejected_naming_the_variable_and_fix() {
        for (args, reason) in [
            (&["--http-port", "53"][..], "DNS forwarder"),
            (&["--http-port", "67"][..], "DHCP server"),
            (&["--http-port", "5900"][..], "VNC"),
            (&["--http-port", "53", "--no-vnc"][..], "DNS forwarder"),
        ] {
            let message = parse(args).expect_err("a colliding port").to_string();
            assert!(message.starts_with("HTTP_PORT (--http-port)"), "{message}");
            assert!(message.contains(reason), "{args:?}: {message}");
            assert!(message.contains("Fix: choose another port"), "{message}");
        }
    }

    #[test]
    fn network_mode_is_auto_by_default_and_a_bad_value_names_the_variable() {
        assert_eq!(parse(&[]).expect("defaults").mode, NetworkMode::Auto);
        let net = parse(&["--network-mode", "passt"]).expect("passt");
        assert_eq!(net.mode, NetworkMode::Passt);
        let message = parse(&["--network-mode", "slirp"])
            .expect_err("not a mode")
            .to_string();
        assert!(
            message.starts_with("NETWORK_MODE (--network-mode)"),
            "{message}"
        );
        assert!(message.contains("slirp"), "{message}");
    }

    #[test]
    fn ipv6_is_auto_by_default_off_on_request_and_bad_addresses_name_their_variable() {
        let on = parse(&[]).expect("defaults").ipv6.expect("auto");
        assert_eq!(on.gw, "fd6b:766d::1".parse::<Ipv6Addr>().expect("v6"));
        assert_eq!(on.vm, None);
        assert_eq!(parse(&["--ipv6", "off"]).expect("off").ipv6, None);
        let fixed = parse(&["--vm-gw6", "fd00:9::1", "--vm-ip6", "fd00:9::2"])
            .expect("valid")
            .ipv6
            .expect("auto");
        assert_eq!(fixed.vm, Some("fd00:9::2".parse().expect("v6")));
        for (args, var) in [
            (&["--ipv6", "on"][..], "IPV6 (--ipv6)"),
            (&["--vm-gw6", "192.168.0.1"][..], "VM_GW6 (--vm-gw6)"),
            (&["--vm-gw6", "fe80::1"][..], "VM_GW6 (--vm-gw6)"),
            (&["--vm-ip6", "fd00:9::2"][..], "VM_IP6 (--vm-ip6)"),
            (&["--vm-ip6", "nonsense"][..], "VM_IP6 (--vm-ip6)"),
        ] {
            let message = parse(args).expect_err("invalid").to_string();
            assert!(message.starts_with(var), "{args:?}: {message}");
            assert!(message.contains("Fix: "), "{message}");
        }
        // IPV6=off ignores the addresses (a chart may render them anyway).
        parse(&["--ipv6", "off", "--vm-gw6", "fe80::1"]).expect("off wins");
    }

    #[test]
    fn http_port_5900_is_fine_without_vnc_and_other_ports_always() {
        let net = parse(&["--http-port", "5900", "--no-vnc"]).expect("no VNC, no clash");
        assert_eq!(net.http_port, Some(5900));
        for port in ["52", "54", "68", "8080", "0"] {
            parse(&["--http-port", port]).expect("no clash");
        }
    }
}

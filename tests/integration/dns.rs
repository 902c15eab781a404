//! `dig` in the VM namespace against the forwarder on VM_GW:53, with dnsmasq in the node
//! namespace standing in for cluster DNS.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::pod::run;
use crate::support::{require_root, Running};
use crate::vmnet::{describe, started, VmNet, HOSTNAME, VM_GW, VM_IP};

const NAME: &str = "www.kvmtest.example";
const ANSWER: &str = "10.77.0.5";

/// dnsmasq on the node address: `--address` entries, a TXT record too big for 512 bytes, and
/// a small EDNS limit so that UDP answers to it come back truncated.
fn cluster_dns(net: &VmNet) -> Running {
    dnsmasq(net.pod.node("dnsmasq"), &net.pod.node_ip)
}

/// [`cluster_dns`] run by `command`, listening on `address`.
fn dnsmasq(mut command: Command, address: &str) -> Running {
    let big: Vec<String> = (0..12)
        .map(|i| format!("--txt-record=big.kvmtest.example,{i:02}{}", "t".repeat(60)))
        .collect();
    command
        .args([
            "-k",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--port",
            "53",
            "--bind-interfaces",
        ])
        .arg(format!("--listen-address={address}"))
        .arg(format!("--address=/kvmtest.example/{ANSWER}"))
        .arg("--edns-packet-max=512")
        .arg("--log-facility=-")
        .args(&big);
    let mut dnsmasq = Running::spawn(&mut command);
    dnsmasq.wait_for_line("started", Duration::from_secs(10));
    dnsmasq
}

fn vm_with_address(net: &VmNet) {
    run(&[
        "ip",
        "-n",
        net.vm_ns(),
        "addr",
        "add",
        &format!("{VM_IP}/30"),
        "dev",
        "eth0",
    ]);
}

/// Gives the node one more address, `address`, on its link to the pod.
fn add_node_address(net: &VmNet, address: &str) {
    run(&[
        "ip",
        "-n",
        &net.pod.node_ns,
        "addr",
        "add",
        &format!("{address}/32"),
        "dev",
        &format!("{}n", net.pod.tag),
    ]);
}

/// Starts the pod after giving the node one more address, `.{host}` on its subnet; `resolv`
/// writes the pod's resolv.conf from that address and the node's own.
fn start_with_node_address(host: u8, resolv: impl FnOnce(&str, &str) -> String) -> (VmNet, String) {
    let extra = std::cell::RefCell::new(String::new());
    let net = VmNet::start_with(|pod| {
        let prefix = pod.node_ip.rsplit_once('.').expect("dotted quad").0;
        let address = format!("{prefix}.{host}");
        let text = resolv(&address, &pod.node_ip);
        *extra.borrow_mut() = address;
        Some(text)
    });
    let extra = extra.into_inner();
    add_node_address(&net, &extra);
    (net, extra)
}

fn dig(net: &VmNet, args: &[&str]) -> Output {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            net.vm_ns(),
            "dig",
            &format!("@{VM_GW}"),
            "+time=6",
            "+tries=1",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dig")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `NAME` resolves to `ANSWER` over UDP and over TCP.
fn assert_resolves_over_udp_and_tcp(net: &VmNet) {
    for transport in ["+notcp", "+tcp"] {
        let out = dig(net, &[transport, "+short", NAME]);
        assert_eq!(
            stdout(&out).trim(),
            ANSWER,
            "{transport}: {}",
            describe(&out)
        );
    }
}

/// Asking for `NAME` gets SERVFAIL.
fn assert_servfail(net: &VmNet) {
    let out = dig(net, &[NAME]);
    assert!(
        stdout(&out).contains("status: SERVFAIL"),
        "{}",
        describe(&out)
    );
}

/// Asks for the TXT record larger than 512 bytes over `transport` with room for all of it
/// (+ignore: no retry on TC); returns dig's output and its `;; flags:` line.
fn big_answer(net: &VmNet, transport: &str) -> (String, String) {
    let out = dig(
        net,
        &[
            transport,
            "+ignore",
            "+bufsize=4096",
            "TXT",
            "big.kvmtest.example",
        ],
    );
    let text = stdout(&out);
    let flags = text
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or_default()
        .to_owned();
    (text, flags)
}

#[test]
fn resolves_cluster_names_over_udp_and_tcp_and_serves_servfail_when_upstream_is_down() {
    let Some(net) = started(
        "resolves_cluster_names_over_udp_and_tcp_and_serves_servfail_when_upstream_is_down",
    ) else {
        return;
    };
    vm_with_address(&net);
    let mut dnsmasq = cluster_dns(&net);
    assert_resolves_over_udp_and_tcp(&net);
    // The upstream truncates at 512 bytes; the forwarder retries over TCP and the whole answer
    // fits the 4096 bytes dig accepts, so it arrives over UDP without TC (+ignore: no retry).
    let (text, flags) = big_answer(&net, "+notcp");
    assert!(!flags.contains(" tc"), "still truncated: {text}");
    assert!(
        flags.contains("ANSWER: 12,"),
        "not the whole answer: {text}"
    );
    let _ = dnsmasq.child.kill();
    let _ = dnsmasq.wait(Duration::from_secs(5));
    assert_servfail(&net);
}

#[test]
fn fails_over_to_the_next_nameserver() {
    if !require_root("fails_over_to_the_next_nameserver") {
        return;
    }
    // First a node address where nothing listens (port unreachable), then the live one.
    let (net, _dead) = start_with_node_address(9, |dead, node_ip| {
        format!("search default.svc.cluster.local\nnameserver {dead}\nnameserver {node_ip}\n")
    });
    vm_with_address(&net);
    let _dnsmasq = cluster_dns(&net);
    let out = dig(&net, &["+short", NAME]);
    assert_eq!(stdout(&out).trim(), ANSWER, "{}", describe(&out));
}

#[test]
fn answers_the_vms_own_hostname_locally() {
    let Some(net) = started("answers_the_vms_own_hostname_locally") else {
        return;
    };
    vm_with_address(&net);
    for name in [
        HOSTNAME.to_owned(),
        format!("{HOSTNAME}.default.svc.cluster.local"),
    ] {
        let out = dig(&net, &["+short", &name]);
        assert_eq!(stdout(&out).trim(), VM_IP, "{name}: {}", describe(&out));
    }
}

#[test]
fn listens_on_vm_gw_only() {
    let Some(net) = started("listens_on_vm_gw_only") else {
        return;
    };
    let out = net.pod.exec("ss").args(["-Hlnut"]).output().expect("ss");
    let sockets = String::from_utf8_lossy(&out.stdout);
    let port53: Vec<&str> = sockets.lines().filter(|l| l.contains(":53 ")).collect();
    assert_eq!(port53.len(), 2, "{sockets}");
    for line in port53 {
        assert!(
            line.contains(&format!("{VM_GW}%kvmbr0:53")) || line.contains(&format!("{VM_GW}:53")),
            "{line}"
        );
    }
    assert!(
        !sockets.contains("0.0.0.0:53 ") && !sockets.contains(&format!("{}:53 ", net.pod.pod_ip)),
        "{sockets}"
    );
}

#[test]
fn answers_servfail_in_time_when_the_upstream_is_silent() {
    if !require_root("answers_servfail_in_time_when_the_upstream_is_silent") {
        return;
    }
    // The nameserver is a node address whose packets the node drops: no answer, no ICMP.
    let (net, silent) = start_with_node_address(8, |silent, _| format!("nameserver {silent}\n"));
    let rules = format!(
        "table inet kmdhcp {{ chain input {{ type filter hook input priority 0; ip daddr {silent} drop; }}; }}\n"
    );
    let status = net
        .pod
        .node("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(rules.as_bytes())?;
            child.wait()
        });
    assert!(status.expect("run nft").success(), "nft failed");
    vm_with_address(&net);
    // dig waits 6 s; the forwarder gives up well before and says so.
    assert_servfail(&net);
}

#[test]
fn a_nameserver_on_127_0_0_1_in_the_pod_answers_over_udp_and_tcp() {
    if !require_root("a_nameserver_on_127_0_0_1_in_the_pod_answers_over_udp_and_tcp") {
        return;
    }
    // A node-local cache or sidecar resolver: the pod's resolv.conf names 127.0.0.1. Our TCP
    // to it must not be DNAT'ed to the VM as `kubectl port-forward` connections are.
    let net = VmNet::start_with(|_| {
        Some("search default.svc.cluster.local\nnameserver 127.0.0.1\n".to_owned())
    });
    vm_with_address(&net);
    let _dnsmasq = dnsmasq(net.pod.exec("dnsmasq"), "127.0.0.1");
    assert_resolves_over_udp_and_tcp(&net);
    // Truncated over UDP at 512 bytes: the forwarder asks 127.0.0.1 again over TCP.
    for transport in ["+tcp", "+notcp"] {
        let (text, flags) = big_answer(&net, transport);
        assert!(
            flags.contains("ANSWER: 12,") && !flags.contains(" tc"),
            "{transport}: not the whole answer over TCP from 127.0.0.1: {text}"
        );
    }
}

//! The node/pod/VM namespace topology of the network tests, and one-shot TCP/UDP peers.
//!
//! Every namespace is named `kmnet-<test>-<role>` and removed on drop. Only private addresses
//! on interfaces created here are used.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{require_root_for_this_test, Running, BIN};

pub const T: Duration = Duration::from_secs(20);
pub const NODE_IP: &str = "10.99.0.1";
pub const POD_IP: &str = "10.99.0.2";
pub const VM_IP: &str = "192.168.254.2";
pub const VM_MAC: &str = "52:54:00:aa:bb:cc";
// --- issue 23 ---
pub const NODE_IP6: &str = "fd99::1";
pub const POD_IP6: &str = "fd99::2";
// --- end issue 23 ---
const PYTHON: &str = "/usr/bin/python3";

/// `serve PROTO HOST PORT`: prints `ready`, answers one peer with `saw <peer ip>`, prints
/// `peer <ip>`. `call PROTO HOST PORT`: prints the answer.
const PEER: &str = r#"
import socket, sys
role, proto, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
if role == "serve":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    if proto == "tcp":
        s.listen(1)
    print("ready", flush=True)
    if proto == "tcp":
        c, peer = s.accept(); c.sendall(("saw " + peer[0]).encode()); c.close()
    else:
        data, peer = s.recvfrom(100); s.sendto(("saw " + peer[0]).encode(), peer)
    print("peer", peer[0], flush=True)
else:
    s.settimeout(5)
    if proto == "tcp":
        s.connect((host, port)); print(s.recv(100).decode(), flush=True)
    else:
        s.sendto(b"hi", (host, port)); print(s.recvfrom(100)[0].decode(), flush=True)
"#;

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run a setup command")
}

pub fn must(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Adds `cidr` to `dev` in namespace `ns`.
pub fn add_address(ns: &str, cidr: &str, dev: &str) {
    must(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev]);
}

/// node ↔ pod ↔ VM namespaces; deleted (with everything in them) on drop.
pub struct Topology {
    pub node: String,
    pub pod: String,
    pub vm: String,
    pet: tempfile::TempDir,
}

impl Topology {
    pub fn new(tag: &str) -> Self {
        let topo = Self {
            node: format!("kmnet-{tag}-node"),
            pod: format!("kmnet-{tag}-pod"),
            vm: format!("kmnet-{tag}-vm"),
            pet: tempfile::tempdir().expect("PET_DIR"),
        };
        for ns in [&topo.node, &topo.pod, &topo.vm] {
            // Left over from an interrupted run.
            let _ = sh(&["ip", "netns", "del", ns]);
            must(&["ip", "netns", "add", ns]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (node, pod, vm) = (&topo.node, &topo.pod, &topo.vm);
        must(&[
            "ip", "-n", pod, "link", "add", "eth0", "mtu", "1450", "type", "veth", "peer", "name",
            "eth0", "netns", node, "mtu", "1450",
        ]);
        add_address(pod, &format!("{POD_IP}/24"), "eth0");
        must(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
        add_address(node, &format!("{NODE_IP}/24"), "eth0");
        must(&["ip", "-n", node, "link", "set", "eth0", "up"]);
        must(&["ip", "-n", pod, "route", "add", "default", "via", NODE_IP]);
        must(&[
            "ip", "-n", vm, "link", "add", "eth0", "address", VM_MAC, "mtu", "1450", "type",
            "veth", "peer", "name", "vmport", "netns", pod, "mtu", "1450",
        ]);
        add_address(vm, &format!("{VM_IP}/30"), "eth0");
        must(&["ip", "-n", vm, "link", "set", "eth0", "up"]);
        must(&[
            "ip",
            "-n",
            vm,
            "route",
            "add",
            "default",
            "via",
            "192.168.254.1",
        ]);
        topo
    }

    /// The topology of a test that needs root (namespaces): `None`, after a loud skip,
    /// without it. The prologue of every network test.
    pub fn for_test(tag: &str) -> Option<Self> {
        require_root_for_this_test().then(|| Self::new(tag))
    }

    /// `sysctl -w SETTING` (`key=value`) in the pod's namespace.
    pub fn sysctl(&self, setting: &str) {
        must(&["ip", "netns", "exec", &self.pod, "sysctl", "-qw", setting]);
    }

    // --- issue 23: a dual-stack pod ---
    /// [`Topology::new`] plus IPv6: the pod's global [`POD_IP6`] on eth0 (its default route
    /// via the node's [`NODE_IP6`]), and the VM's veth with no IPv6 config of its own beyond
    /// what the kernel does (link-local, SLAAC from our router advertisements).
    pub fn dual_stack(tag: &str) -> Option<Self> {
        let topo = Self::for_test(tag)?;
        // nodad: the address is usable at once, as a CNI's is by the time the pod starts.
        must(&[
            "ip",
            "-n",
            &topo.node,
            "addr",
            "add",
            &format!("{NODE_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        must(&[
            "ip",
            "-n",
            &topo.pod,
            "addr",
            "add",
            &format!("{POD_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        must(&[
            "ip", "-n", &topo.pod, "-6", "route", "add", "default", "via", NODE_IP6,
        ]);
        Some(topo)
    }

    /// A command's stdout in `ns`, asserting it succeeded.
    pub fn must_in(&self, ns: &str, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        must(&all)
    }
    // --- end issue 23 ---

    /// A network phase that failed changed nothing: no bridge in the pod.
    pub fn assert_nothing_created(&self) {
        let links = must(&["ip", "-n", &self.pod, "link"]);
        assert!(!links.contains("kvmbr0"), "nothing may be created: {links}");
    }

    /// `kvm-manager network` in the pod netns (plus `wrapper` before it, e.g. capsh).
    pub fn network(&self, env: &[(&str, &str)], wrapper: &[&str]) -> Daemon {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.pod]);
        command.args(wrapper);
        command
            .arg(BIN)
            .arg("network")
            .env("PET_DIR", self.pet.path())
            .env("VM_MAC", VM_MAC)
            .envs(env.iter().copied());
        Daemon(Running::spawn(&mut command))
    }

    /// Starts the network phase, waits until it is ready, plugs the VM's veth into the bridge.
    pub fn up(&self, env: &[(&str, &str)]) -> Daemon {
        let mut daemon = self.network(env, &[]);
        daemon.0.wait_for_line("network ready", T);
        must(&[
            "ip", "-n", &self.pod, "link", "set", "vmport", "master", "kvmbr0", "up",
        ]);
        daemon
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        sh(&all)
    }

    pub fn serve(&self, ns: &str, proto: &str, host: &str, port: u16) -> Daemon {
        let mut command = Command::new("ip");
        command.args([
            "netns", "exec", ns, PYTHON, "-c", PEER, "serve", proto, host,
        ]);
        command.arg(port.to_string());
        let mut server = Daemon(Running::spawn(&mut command));
        server.0.wait_for_line("ready", T);
        server
    }

    /// The answer of a one-shot client, or None if it got none.
    pub fn call(&self, ns: &str, proto: &str, host: &str, port: u16) -> Option<String> {
        let port = port.to_string();
        let out = self.exec(ns, &[PYTHON, "-c", PEER, "call", proto, host, &port]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.node, &self.pod, &self.vm] {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// A process killed (SIGKILL) when the test ends, passing or not.
pub struct Daemon(pub Running);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

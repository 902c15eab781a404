//! A simulated pod with a VM side: the [`Pod`] harness (node and pod namespaces,
//! kvm-manager as PID 1) running `kvm-manager network` as a user would — it builds the bridge
//! carrying `VM_GW/30`, the tap and the NAT, and serves DHCP and DNS — plus veths from the
//! bridge into "VM" namespaces whose end carries `VM_MAC`, standing in for qemu on the tap.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::pod::{run, Pod};
use crate::support::{require_root, Running};

pub const VM_IP: &str = "192.168.254.2";
pub const VM_GW: &str = "192.168.254.1";
pub const VM_MAC: &str = "52:54:00:ab:cd:01";
pub const BRIDGE: &str = "kvmbr0";
pub const MTU: &str = "1450";
pub const HOSTNAME: &str = "vm-0";

/// The pod with `network` serving it, or `None` (said loudly) where the test cannot run.
pub fn started(test: &str) -> Option<VmNet> {
    require_root(test).then(VmNet::start)
}

pub struct VmNet {
    pub pod: Pod,
    pub server: Running,
    vms: Vec<String>,
}

impl VmNet {
    /// With the harness's resolv.conf (search list of a namespace, the node as nameserver).
    pub fn start() -> Self {
        Self::start_with(|_| None)
    }

    /// `resolv` may replace the pod's resolv.conf, given the pod (its addresses).
    pub fn start_with(resolv: impl FnOnce(&Pod) -> Option<String>) -> Self {
        let pod = Pod::new("kmdhcp-", HOSTNAME);
        if let Some(text) = resolv(&pod) {
            std::fs::write(pod.path("resolv.conf"), text).expect("write resolv.conf");
        }
        let server = start_network(&pod);
        let mut net = Self {
            server,
            pod,
            vms: Vec::new(),
        };
        net.add_vm("vm", VM_MAC);
        net
    }

    /// Kills `kvm-manager network` (SIGKILL, as a container restart does) and starts it again
    /// in the same pod: same netns, same volumes.
    pub fn restart(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
        // The pod's PID 1 dies with its parent (`unshare --kill-child`); wait until it is gone
        // so that the new one can bind the same ports.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.pod.pids().iter().any(|pid| is_kvm_manager(pid)) {
            assert!(
                std::time::Instant::now() < deadline,
                "kvm-manager did not die"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.server = start_network(&self.pod);
    }

    /// A VM namespace `<tag>-<suffix>` whose `eth0` (MTU 1500, so an applied 1450 shows) has
    /// `mac` and is plugged into the bridge.
    pub fn add_vm(&mut self, suffix: &str, mac: &str) -> String {
        let vm_ns = format!("{}-{suffix}", self.pod.tag);
        let _ = Command::new("ip")
            .args(["netns", "del", &vm_ns])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &vm_ns]);
        let port = format!("{}{}", &suffix[..1], self.vms.len());
        let pod_ns = self.pod.pod_ns.clone();
        run(&[
            "ip", "-n", &pod_ns, "link", "add", &port, "mtu", MTU, "type", "veth", "peer", "name",
            "eth0", "netns", &vm_ns,
        ]);
        run(&[
            "ip", "-n", &pod_ns, "link", "set", &port, "master", BRIDGE, "up",
        ]);
        run(&[
            "ip", "-n", &vm_ns, "link", "set", "eth0", "address", mac, "mtu", "1500", "up",
        ]);
        run(&["ip", "-n", &vm_ns, "link", "set", "lo", "up"]);
        self.vms.push(vm_ns.clone());
        vm_ns
    }

    pub fn vm_ns(&self) -> &str {
        &self.vms[0]
    }

    /// Runs `script` (sh) in `vm_ns` with private mount and UTS namespaces: `$RESOLV` is bind-
    /// mounted over /etc/resolv.conf, dhcpcd's state directories are fresh tmpfs, and the
    /// hostname starts as `localhost`, so no client touches the host.
    pub fn in_vm(&self, vm_ns: &str, resolv: &Path, script: &str, env: &[(&str, &str)]) -> Output {
        let prelude = r#"set -e
mount --bind "$RESOLV" /etc/resolv.conf
for d in /run/dhcpcd /var/lib/dhcpcd; do [ -d "$d" ] && mount -t tmpfs none "$d"; done
hostname localhost
"#;
        Command::new("ip")
            .args([
                "netns",
                "exec",
                vm_ns,
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "sh",
                "-c",
            ])
            .arg(format!("{prelude}{script}"))
            .env("RESOLV", resolv)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run a command in the VM namespace")
    }

    /// `ip ARGS` in `vm_ns`, stdout as a string.
    pub fn ip(&self, vm_ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", vm_ns])
            .args(args)
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `kvm-manager network` as PID 1 of `pod`, once it serves.
fn start_network(pod: &Pod) -> Running {
    let mut server = pod.kvm_manager(&["network"], &[("VM_MAC", VM_MAC), ("LOG_LEVEL", "debug")]);
    server.wait_for_line(
        "network ready; serving DHCP and DNS",
        Duration::from_secs(30),
    );
    server
}

fn is_kvm_manager(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "kvm-manager")
}

impl Drop for VmNet {
    fn drop(&mut self) {
        for ns in &self.vms {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Prints a failed command's output in the assertion message.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

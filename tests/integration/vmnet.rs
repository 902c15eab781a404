//! A simulated pod with a VM side: the [`Pod`] harness (node and pod namespaces,
//! kvm-manager as PID 1) plus, in the pod namespace, a bridge carrying `VM_GW/30` and a veth
//! into a "VM" namespace whose end carries `VM_MAC` — what the network phase builds, made by
//! hand so the DHCP and DNS tests do not depend on it. kvm-manager runs `serve --bridge`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::pod::{run, Pod};
use crate::support::Running;

pub const VM_IP: &str = "192.168.254.2";
pub const VM_GW: &str = "192.168.254.1";
pub const VM_MAC: &str = "52:54:00:ab:cd:01";
pub const BRIDGE: &str = "kmbr0";
pub const MTU: &str = "1450";
pub const HOSTNAME: &str = "vm-0";

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
        let ns = pod.pod_ns.clone();
        run(&[
            "ip", "-n", &ns, "link", "add", BRIDGE, "mtu", MTU, "type", "bridge",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{VM_GW}/30"),
            "dev",
            BRIDGE,
        ]);
        run(&["ip", "-n", &ns, "link", "set", BRIDGE, "up"]);
        let mut net = Self {
            server: Running::spawn(&mut Command::new("true")),
            pod,
            vms: Vec::new(),
        };
        net.add_vm("vm", VM_MAC);
        net.server = net.pod.kvm_manager(
            &["serve", "--bridge", BRIDGE],
            &[("VM_MAC", VM_MAC), ("LOG_LEVEL", "debug")],
        );
        net.server
            .wait_for_line("serving DHCP and DNS", Duration::from_secs(20));
        net
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

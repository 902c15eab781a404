//! A simulated pod: a "node" network namespace linked by a veth to a "pod" namespace (pod IP
//! on `eth0`, MTU 1450 like an overlay CNI, default route via the node), and kvm-manager
//! started inside it as PID 1 of fresh PID, mount and UTS namespaces with the pod's hostname
//! and a cluster-DNS style `/etc/resolv.conf` bind-mounted over the real one.
//!
//! Volumes are directories under one temporary directory, passed through the contract's
//! variables (`IMAGE_DIR`, `PET_DIR`, `USERDATA`, `METADATA`, `RUNTIME_DIR`), so nothing is
//! created outside it. Only private addresses, only on interfaces inside our namespaces.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::support::{Running, BIN};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Pod {
    pub tag: String,
    pub node_ns: String,
    pub pod_ns: String,
    /// The node's address on the veth (also the "cluster DNS" address).
    pub node_ip: String,
    pub pod_ip: String,
    pub hostname: String,
    pub dir: tempfile::TempDir,
}

/// Runs a setup command (`ip …`), failing the test if it fails.
pub fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .status()
        .expect("run a setup command");
    assert!(status.success(), "{args:?} failed");
}

impl Pod {
    /// A new pod whose namespaces are named `<prefix><n>-node` / `-pod`.
    pub fn new(prefix: &str, hostname: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) + std::process::id() % 50 * 4;
        let tag = format!("{prefix}{n}");
        let node_ns = format!("{tag}-node");
        let pod_ns = format!("{tag}-pod");
        let subnet = format!("10.{}.{}", 200 + (n / 250) % 50, n % 250);
        let (node_ip, pod_ip) = (format!("{subnet}.1"), format!("{subnet}.2"));
        for ns in [&node_ns, &pod_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            run(&["ip", "netns", "add", ns]);
        }
        let veth_node = format!("{tag}n");
        run(&[
            "ip", "-n", &node_ns, "link", "add", &veth_node, "mtu", "1450", "type", "veth", "peer",
            "name", "eth0", "netns", &pod_ns, "mtu", "1450",
        ]);
        run(&[
            "ip",
            "-n",
            &node_ns,
            "addr",
            "add",
            &format!("{node_ip}/24"),
            "dev",
            &veth_node,
        ]);
        run(&["ip", "-n", &node_ns, "link", "set", &veth_node, "up"]);
        run(&["ip", "-n", &node_ns, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &pod_ns,
            "addr",
            "add",
            &format!("{pod_ip}/24"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &pod_ns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &pod_ns, "link", "set", "lo", "up"]);
        run(&[
            "ip", "-n", &pod_ns, "route", "add", "default", "via", &node_ip,
        ]);

        let dir = tempfile::tempdir().expect("pod tempdir");
        for sub in ["image", "pet", "userdata", "metadata", "run"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir volume");
        }
        std::fs::write(
            dir.path().join("resolv.conf"),
            format!(
                "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {node_ip}\noptions ndots:5\n"
            ),
        )
        .expect("write resolv.conf");
        Self {
            tag,
            node_ns,
            pod_ns,
            node_ip,
            pod_ip,
            hostname: hostname.to_owned(),
            dir,
        }
    }

    // --- issue 23: a dual-stack pod ---
    /// Makes this pod dual-stack (additive: pods are IPv4-only unless a test calls this
    /// before kvm-manager starts): a global IPv6 on the pod's uplink, the node's on its end,
    /// the pod's IPv6 default route via the node. Returns (node IPv6, pod IPv6).
    pub fn add_ipv6(&self) -> (String, String) {
        let subnet = self.node_ip.trim_end_matches(".1").replace('.', ":");
        let subnet = subnet.trim_start_matches("10:");
        let (node6, pod6) = (format!("fd98:{subnet}::1"), format!("fd98:{subnet}::2"));
        let veth_node = format!("{}n", self.tag);
        run(&[
            "ip",
            "-n",
            &self.node_ns,
            "addr",
            "add",
            &format!("{node6}/64"),
            "dev",
            &veth_node,
            "nodad",
        ]);
        run(&[
            "ip",
            "-n",
            &self.pod_ns,
            "addr",
            "add",
            &format!("{pod6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        run(&[
            "ip",
            "-n",
            &self.pod_ns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &node6,
        ]);
        (node6, pod6)
    }
    // --- end issue 23 ---

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// The contract's volume variables pointing into this pod's directory.
    pub fn volume_env(&self) -> Vec<(String, String)> {
        let p = |s: &str| self.path(s).to_string_lossy().into_owned();
        vec![
            ("IMAGE_DIR".into(), p("image")),
            ("PET_DIR".into(), p("pet")),
            ("USERDATA".into(), p("userdata")),
            ("METADATA".into(), p("metadata")),
            ("RUNTIME_DIR".into(), p("run")),
        ]
    }

    /// `kvm-manager ARGS` as PID 1 of the pod (fresh PID, mount and UTS namespaces).
    pub fn kvm_manager(&self, args: &[&str], env: &[(&str, &str)]) -> Running {
        self.kvm_manager_after("", args, env)
    }

    /// [`Pod::kvm_manager`] after the shell commands `setup` ran in the pod's namespaces (a
    /// volume mounted there, say), with the contract's variables set.
    pub fn kvm_manager_after(&self, setup: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::spawn(&mut self.kvm_manager_command_after(setup, args, env))
    }

    /// The command [`Pod::kvm_manager`] runs, for a test that wraps it (e.g. in `prlimit`).
    pub fn kvm_manager_command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        self.kvm_manager_command_after("", args, env)
    }

    /// The command [`Pod::kvm_manager_after`] runs.
    pub fn kvm_manager_command_after(
        &self,
        setup: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
        self.kvm_manager_command_wrapped(setup, &[], args, env)
    }

    /// The same, with kvm-manager started through `wrapper` (e.g. `setpriv … --`), which runs
    /// after the pod's root-only setup (hostname, resolv.conf) and may drop privileges.
    pub fn kvm_manager_command_wrapped(
        &self,
        setup: &str,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
        let script = format!(
            r#"set -e
hostname "$POD_HOSTNAME"
mount --bind "$POD_RESOLV" /etc/resolv.conf
{setup}
exec "$@""#
        );
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.pod_ns,
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "--mount",
                "--uts",
                "--kill-child",
            ])
            .args(["sh", "-c", &script, "pod-init"])
            .args(wrapper)
            .arg(BIN)
            .args(args)
            .env("POD_HOSTNAME", &self.hostname)
            .env("POD_RESOLV", self.path("resolv.conf"))
            .env("LOG_LEVEL", "info");
        command.envs(self.volume_env());
        command.envs(env.iter().copied());
        command
    }

    /// A command run in the node namespace.
    pub fn node(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.node_ns, program]);
        command
    }

    /// A command run in the pod namespace (beside kvm-manager, like `kubectl exec`).
    pub fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.pod_ns, program]);
        command
    }

    /// Pids of every process inside the pod's network namespace.
    pub fn pids(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.pod_ns])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for ns in [&self.pod_ns, &self.node_ns] {
            let out = Command::new("ip").args(["netns", "pids", ns]).output();
            if let Ok(out) = out {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

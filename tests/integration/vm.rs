//! A cluster around a simulated pod for the end-to-end tests: the node serves the tiny real
//! guest's image over HTTP (through a gate a test can close to hold the download) and answers
//! DNS like cluster DNS; helpers to reach the pod's PID 1 and its HTTP endpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::pod::Pod;
use crate::support::{require_root_for_this_test, Running};

/// The image server: `python3 -c GATED_SERVER ADDRESS DIRECTORY GATE` serves DIRECTORY on
/// ADDRESS:8000, answering each GET only while the file GATE exists.
const GATED_SERVER: &str = r#"
import functools, http.server, os, sys, time
address, directory, gate = sys.argv[1:4]
class Gated(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        while not os.path.exists(gate):
            time.sleep(0.05)
        super().do_GET()
    def log_message(self, *args):
        pass
handler = functools.partial(Gated, directory=directory)
http.server.ThreadingHTTPServer((address, 8000), handler).serve_forever()
"#;

/// TCG boots the guest in seconds, but CI machines are slow and run tests in parallel.
pub const BOOT: Duration = Duration::from_secs(240);
pub const T: Duration = Duration::from_secs(60);
pub const DNS_ANSWER: &str = "10.123.45.67";
pub const USERDATA: &str =
    "#cloud-config\n# kvmtest.dns=kvmtest.example,vm-e2e\nruncmd: [echo hello]\n";

/// The guest image, built once per test run (cached across runs by the script).
pub fn guest_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guest/build.sh");
            let out = Command::new(&script)
                .stderr(Stdio::inherit())
                .output()
                .expect("run tests/guest/build.sh");
            assert!(out.status.success(), "tests/guest/build.sh failed");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// A pod whose node serves the guest image over HTTP and answers DNS.
pub struct Cluster {
    pub pod: Pod,
    servers: Vec<std::process::Child>,
    pub image_url: String,
    gate: PathBuf,
}

impl Cluster {
    pub fn new(prefix: &str, hostname: &str) -> Self {
        let pod = Pod::new(prefix, hostname);
        let image = guest_image();
        let dir = image.parent().expect("image has a directory").to_owned();
        let name = image
            .file_name()
            .expect("image has a name")
            .to_string_lossy()
            .into_owned();
        let gate = pod.path("image-gate");
        std::fs::write(&gate, "").expect("open the image gate");
        let http = pod
            .node("python3")
            .args(["-c", GATED_SERVER, &pod.node_ip])
            .arg(&dir)
            .arg(&gate)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the image server");
        let dns = pod
            .node("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
            ])
            .arg(format!("--listen-address={}", pod.node_ip))
            .arg(format!("--address=/kvmtest.example/{DNS_ANSWER}"))
            .arg("--pid-file=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq as cluster DNS");
        std::fs::write(pod.path("userdata").join("user-data"), USERDATA).expect("write user-data");
        std::fs::write(pod.path("metadata").join("meta-data"), "role: e2e\n")
            .expect("write meta-data");
        let image_url = format!("http://{}:8000/{name}", pod.node_ip);
        let cluster = Self {
            pod,
            servers: vec![http, dns],
            image_url,
            gate,
        };
        cluster.wait_for_http();
        cluster
    }

    /// The URL of `file` where the cluster serves the test guest: its variants
    /// (`guest-uefi.qcow2`, …) and the images a test builds beside it.
    pub fn url_of(&self, file: &str) -> String {
        self.image_url.replace("guest.qcow2", file)
    }

    /// Holds every image download until [`Cluster::open_gate`]: kvm-manager stays in its
    /// first phase for as long as the test needs to look at it.
    pub fn close_gate(&self) {
        std::fs::remove_file(&self.gate).expect("close the image gate");
    }

    pub fn open_gate(&self) {
        std::fs::write(&self.gate, "").expect("open the image gate");
    }

    fn wait_for_http(&self) {
        for _ in 0..100 {
            let ok = self
                .pod
                .node("python3")
                .args([
                    "-c",
                    &format!(
                        "import socket; socket.create_connection(('{}', 8000), 1)",
                        self.pod.node_ip
                    ),
                ])
                .stderr(Stdio::null())
                .status();
            if ok.map(|s| s.success()).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the image server did not come up");
    }

    /// The cluster of a test that needs root (PID namespaces): `None`, after a loud skip,
    /// without it. The prologue of every end-to-end test.
    pub fn for_test(prefix: &str, hostname: &str) -> Option<Self> {
        require_root_for_this_test().then(|| Self::new(prefix, hostname))
    }

    /// The guest's user-data, in place of [`USERDATA`] (`# kvmtest.…` switches the test
    /// guest's behaviour, tests/guest/README.md).
    pub fn user_data(&self, text: &str) {
        std::fs::write(self.pod.path("userdata").join("user-data"), text).expect("user-data");
    }

    /// The environment of `kvm-manager run` with the test guest, then `extra` (which wins).
    pub fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![
            ("IMG_SOURCE", self.image_url.as_str()),
            ("ACCEL", "tcg"),
            ("VM_MEMORY", "256"),
            ("SHUTDOWN_TIMEOUT", "30s"),
        ];
        env.extend_from_slice(extra);
        env
    }

    pub fn start(&self, extra: &[(&str, &str)]) -> Running {
        self.pod.kvm_manager(&["run"], &self.env(extra))
    }

    /// [`Cluster::start`], then waits until the guest has booted in full: it watches its
    /// power button from then on, so a SIGTERM ends it cleanly.
    pub fn boot(&self, extra: &[(&str, &str)]) -> Running {
        let mut vm = self.start(extra);
        vm.wait_for_line("KVMTEST READY", BOOT);
        vm
    }
}

/// SIGTERM to the pod's PID 1: the guest powers off and kvm-manager exits 0.
/// The pet state `PET_DIR/<hostname>.state.json`, parsed.
pub fn pet_state(pet: &Path, hostname: &str) -> serde_json::Value {
    let bytes = std::fs::read(pet.join(format!("{hostname}.state.json"))).expect("state file");
    serde_json::from_slice(&bytes).expect("state is JSON")
}

pub fn stop(vm: &mut Running) {
    kill(pid1(vm), Signal::SIGTERM).expect("SIGTERM to PID 1");
    assert_eq!(vm.wait(T).code(), Some(0), "{}", vm.output());
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// `key=value` from a `KVMTEST <what> …` line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// The host pid of the pod's PID 1 (the child of `unshare`, itself under `ip netns exec`).
pub fn pid1(running: &Running) -> Pid {
    let mut pid = running.child.id();
    // ip netns exec → unshare → kvm-manager: follow single children down to the PID 1.
    for _ in 0..2 {
        let deadline = Instant::now() + T;
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(child) = children.split_whitespace().next() {
                pid = child.parse().expect("numeric pid");
                break;
            }
            // `ip netns exec` may exec unshare in place instead of forking it.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "unshare" && Instant::now() > deadline {
                panic!("unshare has no child");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            == "kvm-manager"
        {
            break;
        }
    }
    Pid::from_raw(i32::try_from(pid).expect("pid fits"))
}

pub fn http_get(pod: &Pod, port: u16, path: &str) -> (u16, String) {
    let url = format!("http://{}:{port}{path}", pod.pod_ip);
    let out = pod
        .node("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", &url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

//! The command line: every variable of the contract is also a `--kebab-case` flag.
//!
//! clap only collects strings here; [`crate::config`] turns them into typed values once, so
//! that every validation error can name the variable, the bad value and the fix in one format.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::FalseyValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Every option can also be set through the environment variable shown next to it; a flag wins \
over the variable. Arguments after `--` are appended to qemu's command line.

Exit codes: 0 the VM powered off (or the subcommand succeeded); 1 internal error; 2 invalid \
configuration or usage; 3 base image, pet overlay or PET_DIR error; 4 network error \
(also a NETWORK_MODE that cannot work, and passt dying under a running VM); \
5 config-drive error; 6 qemu could not be started; 7 the guest ignored the ACPI power button \
for SHUTDOWN_TIMEOUT and qemu was stopped; 8 another kvm-manager owns this pet \
(PET_DIR/<hostname>.lock); 9 a virtio-fs share's virtiofsd could not start, or died under \
the running VM (which was shut down first); 10 swtpm (TPM=2.0) died under the VM or refused its state; otherwise qemu's own exit code, or 128+N when the supervised \
process was killed by signal N.";

/// PID 1 for a pod that runs one virtual machine: fetches the base image, creates the pet
/// overlay, wires the pod network to the VM, serves DHCP and DNS, builds the config drive,
/// then launches and supervises qemu.
#[derive(Debug, Parser)]
#[command(name = "kvm-manager", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub settings: Settings,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Extra qemu arguments (after `--`) when no subcommand is given (`run` is implied).
    #[arg(last = true, value_name = "QEMU_ARG")]
    pub qemu_extra: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Everything (the default): image, network, DHCP/DNS, config drive, then qemu; stays PID 1
    /// until the VM stops.
    Run {
        /// Extra qemu arguments, appended after ours.
        #[arg(last = true, value_name = "QEMU_ARG")]
        qemu_extra: Vec<String>,
    },
    /// Ensure the base image and the pet overlay, print both paths, exit.
    Image,
    /// Reconcile bridge, tap and NAT, then serve DHCP and DNS in the foreground until SIGTERM.
    Network,
    /// Build the config-drive ISO and exit.
    ConfigDrive {
        /// Where to write the ISO (written to a temporary name, then renamed).
        #[arg(long, value_name = "PATH")]
        output: PathBuf,
    },
    /// Print the qemu command line `run` would use, one argument per line; no side effects.
    QemuArgs {
        /// Extra qemu arguments, appended after ours.
        #[arg(last = true, value_name = "QEMU_ARG")]
        qemu_extra: Vec<String>,
    },
    /// Freeze the guest's filesystems through its agent (for a consistent backup; e.g.
    /// `kubectl exec POD -- kvm-manager freeze`); they thaw by `thaw`, after FREEZE_TIMEOUT,
    /// or on SIGTERM.
    Freeze,
    /// Thaw the guest's filesystems after `freeze`.
    Thaw,
    // --- issue 22: backup and restore ---
    /// Back up the pet disk while the VM runs (e.g. `kubectl exec POD -- kvm-manager backup
    /// --to /backup`): asks the running `kvm-manager run` over RUNTIME_DIR/backup.sock, waits
    /// for the copy and prints its summary (JSON). Incremental when the newest backup in the
    /// directory can be extended, else full; hanging up cancels it.
    Backup {
        /// The directory to write into (a mounted volume); default BACKUP_DIR.
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// A new full backup (a new chain).
        #[arg(long, conflicts_with = "incremental")]
        full: bool,
        /// Only an incremental backup; fails, saying why, when a full one is needed.
        #[arg(long)]
        incremental: bool,
        /// Copy at most this many bytes per second (e.g. `50M`), to leave the VM's disk its
        /// bandwidth; unlimited by default.
        #[arg(long, value_name = "SIZE", value_parser = byte_rate)]
        rate_limit: Option<u64>,
    },
    /// Rebuild PET_DIR/<hostname>.qcow2 (and the UEFI/TPM files) from a backup, with the VM
    /// stopped (an init container or a one-off pod on the pet volume); every checksum is
    /// verified first.
    Restore {
        /// The backup's manifest (`DIR/<hostname>-<stamp>.manifest.json`).
        #[arg(long, value_name = "MANIFEST")]
        from: PathBuf,
        /// Replace an existing pet disk (kept aside until the restore is complete).
        #[arg(long)]
        force: bool,
    },
    // --- end issue 22 ---
    /// Attach this terminal to the guest's serial console (e.g. `kubectl exec -it POD --
    /// kvm-manager console`); Ctrl-] detaches and leaves the VM running.
    Console,
    /// Supervise COMMAND with kvm-manager's PID-1 semantics (signals, reaping, exit codes).
    /// A test hook for the supervisor, not part of the contract.
    #[command(hide = true)]
    Supervise {
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
}

/// `--rate-limit`: bytes (a bare number) or a size with a unit.
fn byte_rate(text: &str) -> Result<u64, String> {
    crate::size::ByteSize::parse(text, Some(1))
        .map(crate::size::ByteSize::bytes)
        .map_err(|e| e.to_string())
}

/// The contract: raw strings as given; parsed and validated by [`crate::config`].
#[derive(Debug, Args)]
pub struct Settings {
    /// Base image: an http(s):// URL, a file:// URL or a local path (qcow2 or raw; .xz, .gz
    /// and .zst are decompressed). `user:password@` in the URL and secret-looking query values
    /// (token, signature, key…) are shown as *** in every log line, error and file.
    #[arg(
        long,
        env = "IMG_SOURCE",
        global = true,
        value_name = "URL|PATH",
        hide_env_values = true
    )]
    pub img_source: Option<String>,

    /// File holding the image server's credential (a mounted Secret key): a bearer token, or
    /// user:password for basic authentication. Sent as the Authorization header, never
    /// logged, never sent to another host after a redirect.
    #[arg(long, env = "IMG_AUTH_FILE", global = true, value_name = "PATH")]
    pub img_auth_file: Option<PathBuf>,

    /// Attempts of one download before it gives up (exit 3). A cut-short response counts;
    /// one that made progress earns one more attempt, at most FETCH_ATTEMPTS more in all.
    #[arg(
        long,
        env = "FETCH_ATTEMPTS",
        global = true,
        default_value = "5",
        value_name = "N"
    )]
    pub fetch_attempts: String,

    /// An attempt fails when the server sends nothing (no header, no byte) for this long.
    #[arg(
        long,
        env = "FETCH_STALL_TIMEOUT",
        global = true,
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub fetch_stall_timeout: String,

    /// An attempt fails when fewer bytes per second than this arrive, averaged over
    /// FETCH_RATE_WINDOW (like curl's --speed-limit); 0: no minimum.
    #[arg(
        long,
        env = "FETCH_MIN_RATE",
        global = true,
        default_value = "16Ki",
        value_name = "BYTES"
    )]
    pub fetch_min_rate: String,

    /// The window over which FETCH_MIN_RATE is averaged (like curl's --speed-time).
    #[arg(
        long,
        env = "FETCH_RATE_WINDOW",
        global = true,
        default_value = "120s",
        value_name = "DURATION"
    )]
    pub fetch_rate_window: String,

    /// Connections a large download is fetched over, each receiving its own part of the file
    /// into the partial file (when the server takes ranges, names a validator, and the image
    /// is at least FETCH_PARALLEL_MIN_SIZE and not compressed); 1: one stream.
    #[arg(
        long,
        env = "FETCH_CONNECTIONS",
        global = true,
        default_value = "4",
        value_name = "N"
    )]
    pub fetch_connections: String,

    /// Downloads smaller than this use one connection whatever FETCH_CONNECTIONS says (a few
    /// requests' latency is not worth it).
    #[arg(
        long,
        env = "FETCH_PARALLEL_MIN_SIZE",
        global = true,
        default_value = "64Mi",
        value_name = "SIZE"
    )]
    pub fetch_parallel_min_size: String,

    /// Free space a download leaves on IMAGE_DIR for everyone else sharing it: a size (1Gi)
    /// or a share of the volume (5%). A download (or its decompression) that would go below
    /// it stops and removes what cannot be resumed.
    #[arg(
        long,
        env = "IMAGE_DIR_RESERVE",
        global = true,
        default_value = "1Gi",
        value_name = "SIZE|N%"
    )]
    pub image_dir_reserve: String,

    /// File name of the base image in IMAGE_DIR (no `/`, no `..`), or the absolute path of an
    /// existing image. Default: the last path segment of IMG_SOURCE minus a compression suffix.
    #[arg(long, env = "IMG_TARGET", global = true, value_name = "NAME|PATH")]
    pub img_target: Option<String>,

    /// Expected sha256 (64 hex digits) of the bytes as downloaded; a base already in
    /// IMAGE_DIR is held to it too (by its verification record while it is unchanged).
    #[arg(long, env = "IMG_SHA256", global = true, value_name = "HEX")]
    pub img_sha256: Option<String>,

    /// Shared volume of base images (may be shared by many pods at once).
    #[arg(
        long,
        env = "IMAGE_DIR",
        global = true,
        default_value = "/image",
        value_name = "DIR"
    )]
    pub image_dir: PathBuf,

    /// This VM's own volume: <hostname>.qcow2, the persisted MAC and other state.
    #[arg(
        long,
        env = "PET_DIR",
        global = true,
        default_value = "/pet",
        value_name = "DIR"
    )]
    pub pet_dir: PathBuf,

    /// Address of the VM; VM_IP and VM_GW must be the two host addresses of one /30.
    #[arg(long, env = "VM_IP", global = true, default_value = "192.168.254.2")]
    pub vm_ip: String,

    /// Address of our bridge (the VM's gateway, DHCP server and DNS forwarder).
    #[arg(long, env = "VM_GW", global = true, default_value = "192.168.254.1")]
    pub vm_gw: String,

    // --- issue 23: IPv6 dual-stack in NAT mode ---
    /// `auto`: when the pod has a global IPv6 address, NAT mode also gives the VM IPv6 (RA,
    /// DHCPv6, the ip6 NAT); `off`: IPv4 only.
    #[arg(long = "ipv6", env = "IPV6", global = true, default_value = "auto")]
    pub ipv6: String,

    /// The VM's IPv6 address, in VM_GW6's /64. Default: the address the guest's kernel derives
    /// by SLAAC from VM_MAC (EUI-64), which DHCPv6 hands out too.
    #[arg(long = "vm-ip6", env = "VM_IP6", global = true, value_name = "IPV6")]
    pub vm_ip6: Option<String>,

    /// Our bridge's IPv6 address (the VM's router and DNS forwarder); its /64 is the VM's.
    #[arg(
        long = "vm-gw6",
        env = "VM_GW6",
        global = true,
        default_value = "fd6b:766d::1"
    )]
    pub vm_gw6: String,
    // --- end issue 23 ---
    /// MAC address of the VM's NIC. Default: derived from the hostname, persisted in PET_DIR.
    #[arg(long, env = "VM_MAC", global = true, value_name = "MAC")]
    pub vm_mac: Option<String>,

    /// Number of virtual CPUs. Default: the container's CPU limit (cgroup quota), else 1.
    #[arg(long, env = "VM_CPUS", global = true, value_name = "N")]
    pub vm_cpus: Option<String>,

    /// Guest memory, e.g. 2Gi, 1536M, or a bare number of MiB. Default: the container's memory
    /// limit minus qemu's overhead, else 1Gi.
    #[arg(long, env = "VM_MEMORY", global = true, value_name = "SIZE")]
    pub vm_memory: Option<String>,

    /// Virtual size of the overlay, e.g. 20Gi (grow-only). Default: the base image's size.
    #[arg(long, env = "VM_DISK_SIZE", global = true, value_name = "SIZE")]
    pub vm_disk_size: Option<String>,

    /// No VNC: TCP 5900 goes to the VM like every other port. As a variable: set to anything
    /// but empty, 0, false, no, off.
    #[arg(long, env = "NO_VNC", global = true, action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub no_vnc: bool,

    /// Require this password for VNC (set over QMP, never on qemu's command line). Without
    /// it, VNC and the web console answer only on the pod's loopback, i.e. through `kubectl
    /// port-forward`; with it, also on the pod IP.
    #[arg(long, env = "VNC_PASSWORD", global = true, hide_env_values = true)]
    pub vnc_password: Option<String>,

    /// A web-console viewer that sends no keyboard or mouse input for this long is
    /// disconnected (e.g. 15m, 90s; a bare number means seconds). Besides, when all 8 viewer
    /// slots are taken, a new viewer replaces the one idle the longest.
    #[arg(
        long,
        env = "CONSOLE_IDLE_TIMEOUT",
        global = true,
        default_value = "15m"
    )]
    pub console_idle_timeout: String,

    /// No DHCP server (the guest is configured otherwise). Same values as NO_VNC.
    #[arg(long, env = "NO_DHCP", global = true, action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub no_dhcp: bool,

    /// `auto`: `nat` when the container has CAP_NET_ADMIN and /dev/net/tun, else `passt`.
    /// `nat`: bridge, tap and nftables; the VM behind VM_IP, our DHCP and DNS. `passt`: the
    /// VM on the pod's own IPv4/IPv6 through a passt child; needs no capability and no tun.
    #[arg(long, env = "NETWORK_MODE", global = true, default_value = "auto")]
    pub network_mode: String,

    /// `forward`: DHCP hands out VM_GW and our forwarder relays to the pod's nameservers;
    /// `passthrough`: DHCP hands out the pod's nameservers.
    #[arg(long, env = "DNS_MODE", global = true, default_value = "forward")]
    pub dns_mode: String,

    /// User data for the config drive: a regular file or a ConfigMap directory; symlinks
    /// only inside their own directory.
    #[arg(
        long,
        env = "USERDATA",
        global = true,
        default_value = "/userdata",
        value_name = "PATH"
    )]
    pub userdata: PathBuf,

    /// Metadata for the config drive: a regular file or a ConfigMap directory (a YAML
    /// mapping, typed as cloud-init's PyYAML reads it, or JSON); symlinks only inside their
    /// own directory.
    #[arg(
        long,
        env = "METADATA",
        global = true,
        default_value = "/metadata",
        value_name = "PATH"
    )]
    pub metadata: PathBuf,

    /// `config-2` (OpenStack layout), `nocloud` (label cidata) or `none`.
    #[arg(long, env = "CONFIG_DRIVE", global = true, default_value = "config-2")]
    pub config_drive: String,

    /// `auto` (kvm when /dev/kvm is usable, else tcg with a warning), `kvm` or `tcg`.
    #[arg(long, env = "ACCEL", global = true, default_value = "auto")]
    pub accel: String,

    /// `auto`, `bios` (SeaBIOS), `uefi` (OVMF with a variable store `PET_DIR/<hostname>.vars`,
    /// copied once from the template and kept) or `uefi-secure` (Secure Boot with
    /// Microsoft's keys enrolled; q35 with SMM). `auto` reads the base image at the VM's first
    /// boot: uefi for a disk with an EFI system partition and no BIOS boot code (or an ISO that
    /// boots only UEFI), else bios. Recorded at the first boot and kept; a different value on
    /// an existing VM is refused unless FIRMWARE_RESET is set (with `auto`, it decides again).
    #[arg(long, env = "FIRMWARE", global = true, default_value = "auto")]
    pub firmware: String,

    /// `pc` (i440fx) or `q35`. Default: `q35` with UEFI, `pc` with BIOS (under FIRMWARE=auto:
    /// what the VM first booted with). UEFI needs `q35`.
    #[arg(long, env = "MACHINE", global = true)]
    pub machine: Option<String>,

    /// Accept a FIRMWARE or MACHINE different from the one the VM first booted with, and
    /// re-create the UEFI variable store from the template (boot entries and variables are
    /// lost) on every start while set. Same values as NO_VNC.
    #[arg(long, env = "FIRMWARE_RESET", global = true, action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub firmware_reset: bool,

    /// `none` or `2.0`: a TPM 2.0 (swtpm, a supervised child) whose state lives in
    /// `PET_DIR/<hostname>.tpm/`, created once and reused; a state that cannot be read is an
    /// error, never replaced. swtpm dying stops the VM (exit 9).
    #[arg(long, env = "TPM", global = true, default_value = "none")]
    pub tpm: String,

    /// Another ISO (e.g. a driver disk) attached as a second read-only CD-ROM, after the
    /// installer when IMG_SOURCE is an ISO: an absolute path in the container, or an http(s)
    /// URL fetched and cached in IMAGE_DIR (under the URL's file name) like a base image.
    #[arg(long, env = "INSTALL_MEDIA", global = true, value_name = "PATH|URL")]
    pub install_media: Option<String>,

    /// Expected sha256 (64 hex digits) of INSTALL_MEDIA as downloaded, when it is a URL.
    #[arg(long, env = "INSTALL_MEDIA_SHA256", global = true, value_name = "HEX")]
    pub install_media_sha256: Option<String>,

    /// SMBIOS system UUID (type 1) the guest sees. Default: the VM's instance id (kept in the
    /// pet state), so licensing and cloud-init see the same machine after every restart.
    #[arg(long, env = "VM_UUID", global = true, value_name = "UUID")]
    pub vm_uuid: Option<String>,

    /// SMBIOS system serial number (type 1), at most 64 printable ASCII characters. Default:
    /// the VM's instance id.
    #[arg(long, env = "VM_SERIAL", global = true)]
    pub vm_serial: Option<String>,

    /// Path or name of the qemu binary (RHEL-style images: /usr/libexec/qemu-kvm).
    #[arg(
        long,
        env = "QEMU",
        global = true,
        default_value = "qemu-system-x86_64"
    )]
    pub qemu: PathBuf,

    /// Time the guest gets to power off after SIGTERM (ACPI power button, re-sent), before
    /// qemu is told to quit and then killed. The default fits Kubernetes' default 30s grace.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", global = true, default_value = "25s")]
    pub shutdown_timeout: String,

    /// Port of our HTTP server (health, readiness, metrics, console); 0 disables it. It is
    /// excluded from the NAT to the VM. Not 53 or 67 (our DNS and DHCP), nor 5900 unless NO_VNC.
    #[arg(long, env = "HTTP_PORT", global = true, default_value = "8080")]
    pub http_port: String,

    /// Where kvm-manager keeps its sockets (qemu's QMP and serial console) and the config
    /// drive it builds at start; `kvm-manager console` finds the VM there.
    #[arg(
        long,
        env = "RUNTIME_DIR",
        global = true,
        default_value = "/run/kvm-manager",
        value_name = "DIR"
    )]
    pub runtime_dir: PathBuf,

    /// With NO_DHCP, /readyz turns ready once the guest accepts TCP connections on this port
    /// of VM_IP (with DHCP, readiness is the guest taking its lease).
    #[arg(long, env = "READY_PORT", global = true, default_value = "22")]
    pub ready_port: String,

    /// Directory with the noVNC client (its `core/rfb.js`) served by the web console.
    #[arg(
        long,
        env = "NOVNC_DIR",
        global = true,
        default_value = "/usr/share/kvm-manager/novnc",
        value_name = "DIR"
    )]
    pub novnc_dir: PathBuf,

    #[command(flatten)]
    pub agent: AgentSettings,

    // --- issue 24: shares, Ignition, multiqueue ---
    #[command(flatten)]
    pub guest_io: GuestIoSettings,
    // --- end issue 24 ---
    // Issue 22.
    #[command(flatten)]
    pub backup: BackupSettings,

    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", global = true, default_value = "text")]
    pub log_format: String,

    /// `error`, `warn`, `info`, `debug`, `trace`, or tracing directives like
    /// `info,kvm_manager::net=debug`.
    #[arg(long, env = "LOG_LEVEL", global = true, default_value = "info")]
    pub log_level: String,
}

/// The guest agent's settings: polling, readiness, freeze and thaw.
#[derive(Debug, Args)]
pub struct AgentSettings {
    /// How often the guest agent is pinged (one small request; the guest's details are
    /// fetched again only when the agent reappears, and at most every minute). A guest without
    /// an agent is reported as "no agent".
    #[arg(
        long,
        env = "AGENT_POLL_INTERVAL",
        global = true,
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub agent_poll_interval: String,

    /// When /readyz turns ready: `lease` (the guest took its DHCP lease), `agent` (the guest
    /// agent answers) or `port` (the guest accepts TCP on READY_PORT). Default: `lease`, or
    /// `port` with NO_DHCP.
    #[arg(long, env = "READY_ON", global = true, value_name = "lease|agent|port")]
    pub ready_on: Option<String>,

    /// A freeze of the guest's filesystems (`kvm-manager freeze`, POST /freeze) thaws by
    /// itself after this long if nobody thaws it.
    #[arg(
        long,
        env = "FREEZE_TIMEOUT",
        global = true,
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub freeze_timeout: String,

    /// File holding a token (a mounted Secret key) that lets POST /freeze and /thaw in from
    /// the pod network (`Authorization: Bearer TOKEN`); without it they answer loopback only.
    #[arg(long, env = "CONTROL_TOKEN_FILE", global = true, value_name = "PATH")]
    pub control_token_file: Option<PathBuf>,

    /// SSH public keys for the guest: a file, or a directory of them (a mounted Secret). Added
    /// through the guest agent to SSH_USER's authorized_keys at every start and whenever they
    /// change (never removed).
    #[arg(long, env = "SSH_AUTHORIZED_KEYS", global = true, value_name = "PATH")]
    pub ssh_authorized_keys: Option<PathBuf>,

    /// The guest user whose authorized_keys gets SSH_AUTHORIZED_KEYS. Default: the guest's
    /// user with UID 1000 (the image's default cloud user: debian, ubuntu, cloud-user…).
    #[arg(long, env = "SSH_USER", global = true, value_name = "NAME")]
    pub ssh_user: Option<String>,
}

// --- issue 24: shares, Ignition, multiqueue ---
/// Pod directories shared into the guest, Ignition by fw_cfg, and the NIC's queues.
#[derive(Debug, Args)]
pub struct GuestIoSettings {
    /// Pod directories shared into the guest: `TAG=/PATH[:ro|:rw][:virtiofs|:9p]`, comma
    /// separated (e.g. `config=/etc/app:ro,data=/data:rw`); read-only unless `:rw`; `/DIR[:rw]`
    /// without `TAG=`: each subdirectory of DIR is a share tagged with its name. The guest
    /// mounts TAG (`mount -t virtiofs TAG DIR`, or `-t 9p -o trans=virtio`); cloud-init
    /// images mount each at /mnt/TAG by themselves (a vendor-data bootcmd).
    #[arg(
        long,
        env = "SHARES",
        global = true,
        value_name = "TAG=PATH[:ro|:rw],…"
    )]
    pub shares: Option<String>,

    /// How SHARES reach the guest unless a share names its own: `auto` (virtio-fs when
    /// VIRTIOFSD is found, else 9p), `virtiofs` (a virtiofsd child per share; qemu's memory
    /// becomes shared memfd) or `9p` (qemu's own 9p server, no daemon, slower).
    #[arg(long, env = "SHARE_TRANSPORT", global = true, default_value = "auto")]
    pub share_transport: String,

    /// The virtiofsd binary (the Rust daemon) for virtio-fs shares.
    #[arg(
        long,
        env = "VIRTIOFSD",
        global = true,
        default_value = "virtiofsd",
        value_name = "PATH"
    )]
    pub virtiofsd: PathBuf,

    /// `auto`: user-data that is an Ignition config (JSON with `ignition.version`) is also
    /// passed by fw_cfg as `opt/com.coreos/config` (Fedora CoreOS, RHCOS, Flatcar `qemu`
    /// images read it there), besides the config drive; `off`: only the config drive.
    #[arg(long, env = "IGNITION", global = true, default_value = "auto")]
    pub ignition: String,

    /// Queue pairs of the VM's NIC in NAT mode (a multiqueue tap): `auto` = one per vCPU, at
    /// most 8; a number from 1 (no multiqueue) to 64. passt mode always uses one queue.
    #[arg(long, env = "NIC_QUEUES", global = true, default_value = "auto")]
    pub nic_queues: String,
}
// --- end issue 24 ---
// --- issue 22: scheduled backups ---
#[derive(Debug, Args)]
pub struct BackupSettings {
    /// The backup volume's directory: where POST /backup (without `to=`) and BACKUP_SCHEDULE
    /// write. Absolute.
    #[arg(long, env = "BACKUP_DIR", global = true, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Back the pet disk up every this long (e.g. `6h`, at least 1m) into BACKUP_DIR, from PID 1:
    /// incremental, a full one when a chain is BACKUP_FULL_EVERY long (or cannot be extended).
    /// Unset: no timer.
    #[arg(long, env = "BACKUP_SCHEDULE", global = true, value_name = "DURATION")]
    pub backup_schedule: Option<String>,

    /// A new chain (a full backup) once a chain holds this many backups.
    #[arg(
        long,
        env = "BACKUP_FULL_EVERY",
        global = true,
        default_value = "7",
        value_name = "N"
    )]
    pub backup_full_every: String,

    /// The schedule keeps the newest K chains in BACKUP_DIR and deletes older ones after each
    /// complete backup.
    #[arg(
        long,
        env = "BACKUP_KEEP",
        global = true,
        default_value = "2",
        value_name = "K"
    )]
    pub backup_keep: String,
}
// --- end issue 22 ---

//! Prometheus metrics: one registry for the process, rendered on `/metrics` in the OpenMetrics
//! text format by the Prometheus project's client (prometheus-client). No clock is calibrated at
//! start (the `metrics` exporter spun the CPU for 0.6 ms to 200 ms there, on PID 1's critical
//! path).
//!
//! A leaf: it imports nothing of ours, so every area counts into it directly through the
//! pre-made handles below ([`DHCP`], [`DNS`], [`VM`], [`IMAGE`]); `http/` only renders it.
//! Every metric is named, described and registered in [`REGISTRY`] alone.
//!
//! Names (all prefixed `kvm_manager_`): `phase_seconds{phase}` (how long each start phase
//! took), `dhcp_packets_total{kind}`, `dhcp_replies_total{kind}` (ack counts leases and
//! renewals), `dns_queries_total{kind}`, `dns_failures_total{kind}`,
//! `dns_upstream_queries_total{upstream}`, `dns_upstream_failures_total{upstream}`,
//! `image_download_bytes_total`, `image_state{state}`, `qemu_up`,
//! `vm_phase{phase}`, `vm_paused{reason}`, `guest_shutdowns_total{how}`, `starts_total`,
//! `spoofed_packets_total` (packets from the VM with a forged source, dropped: the nft counter,
//! read at each scrape), `guest_agent_up`, `guest_filesystem_used_bytes{mountpoint}`,
//! `guest_filesystem_size_bytes{mountpoint}`, `guest_info{os,version,kernel}` (from the guest
//! agent, [`GUEST`]), `backup_bytes_total`, `backup_failures_total`, `backup_running`,
//! `backup_progress_bytes`, `backup_last_success_timestamp_seconds`,
//! `backup_last_duration_seconds` ([`BACKUP`]).

use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// One label, `name="value"`.
type Label = [(&'static str, String); 1];
/// Counters told apart by one label.
type Counters = Family<Label, Counter>;
/// Gauges of which one is 1 (the current value of the label) and the others 0.
type OneHot = Family<Label, Gauge>;

fn label(name: &'static str, value: impl Into<String>) -> Label {
    [(name, value.into())]
}

/// The `kind="…"` members of `family`, made now: every kind is exported (as 0) before it
/// first counts.
fn kinds<const N: usize>(family: &Counters, kinds: [&'static str; N]) -> [Counter; N] {
    kinds.map(|kind| family.get_or_create(&label("kind", kind)).clone())
}

/// Sets `family{label=…}` to 1 for `current` and to 0 for every other of `states`.
fn one_hot(family: &OneHot, name: &'static str, states: &[&str], current: &str) {
    for &state in states {
        family
            .get_or_create(&label(name, state))
            .set(i64::from(state == current));
    }
}

/// The DHCP server's counters.
#[derive(Debug)]
pub(crate) struct Dhcp {
    packets: Counters,
    replies: Counters,
    pub received: Counter,
    pub malformed: Counter,
    pub ignored: Counter,
    pub offers: Counter,
    pub acks: Counter,
    pub naks: Counter,
}

pub(crate) static DHCP: LazyLock<Dhcp> = LazyLock::new(|| {
    let packets = Counters::default();
    let replies = Counters::default();
    let [received, malformed, ignored] = kinds(&packets, ["received", "malformed", "ignored"]);
    let [offers, acks, naks] = kinds(&replies, ["offer", "ack", "nak"]);
    Dhcp {
        packets,
        replies,
        received,
        malformed,
        ignored,
        offers,
        acks,
        naks,
    }
});

/// The DNS forwarder's counters.
#[derive(Debug)]
pub(crate) struct Dns {
    queries_family: Counters,
    failures: Counters,
    upstream_queries: Counters,
    upstream_failures: Counters,
    pub queries: Counter,
    pub local: Counter,
    pub forwarded: Counter,
    pub servfail: Counter,
    pub malformed: Counter,
    pub dropped: Counter,
}

impl Dns {
    /// A query forwarded to `upstream`.
    pub(crate) fn upstream_query(&self, upstream: &str) {
        self.upstream_queries
            .get_or_create(&label("upstream", upstream))
            .inc();
    }

    /// A forwarded query that `upstream` failed or refused.
    pub(crate) fn upstream_failure(&self, upstream: &str) {
        self.upstream_failures
            .get_or_create(&label("upstream", upstream))
            .inc();
    }
}

pub(crate) static DNS: LazyLock<Dns> = LazyLock::new(|| {
    let queries_family = Counters::default();
    let failures = Counters::default();
    let [queries, local, forwarded] = kinds(&queries_family, ["all", "local", "forwarded"]);
    let [servfail, malformed, dropped] = kinds(&failures, ["servfail", "malformed", "dropped"]);
    Dns {
        queries_family,
        failures,
        upstream_queries: Counters::default(),
        upstream_failures: Counters::default(),
        queries,
        local,
        forwarded,
        servfail,
        malformed,
        dropped,
    }
});

/// This process and its VM.
#[derive(Debug, Default)]
pub(crate) struct Vm {
    pub starts: Counter,
    pub qemu_up: Gauge,
    phase_seconds: Family<Label, Gauge<f64, AtomicU64>>,
    phase: OneHot,
    paused: OneHot,
    shutdowns: Counters,
}

impl Vm {
    /// Start phase `phase` took `took`.
    pub(crate) fn phase_took(&self, phase: &'static str, took: Duration) {
        self.phase_seconds
            .get_or_create(&label("phase", phase))
            .set(took.as_secs_f64());
    }

    /// `vm_phase{phase}`: 1 for `current`, 0 for every other of `phases`.
    pub(crate) fn phase(&self, phases: &[&str], current: &str) {
        one_hot(&self.phase, "phase", phases, current);
    }

    /// `vm_paused{reason}`: 1 for `current`, 0 for every other of `reasons` (all 0 with `None`).
    pub(crate) fn paused(&self, reasons: &[&str], current: Option<&str>) {
        one_hot(&self.paused, "reason", reasons, current.unwrap_or(""));
    }

    /// qemu ended, `how`.
    pub(crate) fn shutdown(&self, how: &'static str) {
        self.shutdowns.get_or_create(&label("how", how)).inc();
    }
}

pub(crate) static VM: LazyLock<Vm> = LazyLock::new(Vm::default);

/// The base image.
#[derive(Debug, Default)]
pub(crate) struct Image {
    pub download_bytes: Counter,
    state: OneHot,
}

impl Image {
    /// `image_state{state}`: 1 for `current`, 0 for every other of `states`.
    pub(crate) fn state(&self, states: &[&str], current: &str) {
        one_hot(&self.state, "state", states, current);
    }
}

pub(crate) static IMAGE: LazyLock<Image> = LazyLock::new(Image::default);

/// `guest_info{os,version,kernel}`: the labels of the one series.
type InfoLabels = [(&'static str, String); 3];

/// The guest, as its agent reports it (see `qemu::agent::poll`).
#[derive(Debug, Default)]
pub(crate) struct Guest {
    pub agent_up: Gauge,
    filesystem_used: Family<Label, Gauge>,
    filesystem_size: Family<Label, Gauge>,
    info: Family<InfoLabels, Gauge>,
}

impl Guest {
    /// Replaces the filesystems: `(mountpoint, used, size)` in bytes (an unknown size is left
    /// out, not exported as 0).
    pub(crate) fn filesystems(&self, filesystems: &[(String, Option<u64>, Option<u64>)]) {
        self.filesystem_used.clear();
        self.filesystem_size.clear();
        for (mountpoint, used, size) in filesystems {
            let key = label("mountpoint", mountpoint.clone());
            let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
            if let Some(used) = used {
                self.filesystem_used.get_or_create(&key).set(gauge(*used));
            }
            if let Some(size) = size {
                self.filesystem_size.get_or_create(&key).set(gauge(*size));
            }
        }
    }

    /// Replaces the one `guest_info` series (none with `None`).
    pub(crate) fn info(&self, info: Option<[String; 3]>) {
        self.info.clear();
        if let Some([os, version, kernel]) = info {
            self.info
                .get_or_create(&[("os", os), ("version", version), ("kernel", kernel)])
                .set(1);
        }
    }
}

pub(crate) static GUEST: LazyLock<Guest> = LazyLock::new(Guest::default);

// --- issue 22: backups ---
/// The pet disk's backups (see `backup::job`).
#[derive(Debug, Default)]
pub(crate) struct Backup {
    bytes: Counter,
    failures: Counter,
    running: Gauge,
    progress_bytes: Gauge,
    last_success: Gauge<f64, AtomicU64>,
    last_duration: Gauge<f64, AtomicU64>,
}

pub(crate) static BACKUP: LazyLock<Backup> = LazyLock::new(Backup::default);

pub(crate) fn backup_started() {
    BACKUP.running.set(1);
    BACKUP.progress_bytes.set(0);
}

pub(crate) fn backup_progress(bytes: u64) {
    BACKUP
        .progress_bytes
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

pub(crate) fn backup_succeeded(bytes: u64, took: Duration, at: std::time::SystemTime) {
    BACKUP.running.set(0);
    BACKUP.bytes.inc_by(bytes);
    BACKUP.last_duration.set(took.as_secs_f64());
    let since_epoch = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    BACKUP.last_success.set(since_epoch.as_secs_f64());
}

pub(crate) fn backup_failed() {
    BACKUP.running.set(0);
    BACKUP.failures.inc();
}
// --- end issue 22 ---

/// Every metric this process exports, registered here and nowhere else (the handles above share
/// their values with it).
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let (vm, image, dhcp, dns) = (&*VM, &*IMAGE, &*DHCP, &*DNS);
    registry.register(
        "kvm_manager_starts",
        "Starts of this process (a container restart resets it)",
        vm.starts.clone(),
    );
    registry.register(
        "kvm_manager_phase_seconds",
        "How long each start phase took",
        vm.phase_seconds.clone(),
    );
    registry.register(
        "kvm_manager_vm_phase",
        "The VM's phase: 1 for the current one",
        vm.phase.clone(),
    );
    registry.register(
        "kvm_manager_vm_paused",
        "Why the VM is paused (no-space, io-error, stopped): 1 for the current reason, all 0 while it runs",
        vm.paused.clone(),
    );
    registry.register(
        "kvm_manager_qemu_up",
        "1 while qemu runs",
        vm.qemu_up.clone(),
    );
    registry.register(
        "kvm_manager_guest_shutdowns",
        "How qemu ended: powered-off, forced or qemu-failed",
        vm.shutdowns.clone(),
    );
    registry.register(
        "kvm_manager_image_state",
        "The base image: 1 for the current state",
        image.state.clone(),
    );
    registry.register(
        "kvm_manager_image_download_bytes",
        "Bytes of the base image downloaded by this process",
        image.download_bytes.clone(),
    );
    registry.register(
        "kvm_manager_dns_upstream_queries",
        "Queries forwarded to each pod nameserver",
        dns.upstream_queries.clone(),
    );
    registry.register(
        "kvm_manager_dns_upstream_failures",
        "Forwarded queries a pod nameserver failed or refused",
        dns.upstream_failures.clone(),
    );
    registry.register(
        "kvm_manager_dhcp_packets",
        "DHCP packets received from the VM, malformed or ignored",
        dhcp.packets.clone(),
    );
    registry.register(
        "kvm_manager_dhcp_replies",
        "DHCP replies sent to the VM (ack counts leases and renewals)",
        dhcp.replies.clone(),
    );
    registry.register(
        "kvm_manager_dns_queries",
        "DNS queries from the VM: all, answered locally, forwarded",
        dns.queries_family.clone(),
    );
    registry.register(
        "kvm_manager_dns_failures",
        "DNS queries answered SERVFAIL, malformed or dropped",
        dns.failures.clone(),
    );
    let guest = &*GUEST;
    registry.register(
        "kvm_manager_guest_agent_up",
        "1 while the guest agent answers",
        guest.agent_up.clone(),
    );
    registry.register(
        "kvm_manager_guest_filesystem_used_bytes",
        "Bytes used on each guest filesystem, as the guest agent reports it",
        guest.filesystem_used.clone(),
    );
    registry.register(
        "kvm_manager_guest_filesystem_size_bytes",
        "Size of each guest filesystem, as the guest agent reports it",
        guest.filesystem_size.clone(),
    );
    registry.register(
        "kvm_manager_guest_info",
        "The guest's OS, its version and kernel, as the guest agent reports them: always 1",
        guest.info.clone(),
    );
    let backup = &*BACKUP;
    registry.register(
        "kvm_manager_backup_bytes",
        "Bytes of the pet disk copied by complete backups",
        backup.bytes.clone(),
    );
    registry.register(
        "kvm_manager_backup_failures",
        "Backups that failed or were cancelled",
        backup.failures.clone(),
    );
    registry.register(
        "kvm_manager_backup_running",
        "1 while a backup job runs",
        backup.running.clone(),
    );
    registry.register(
        "kvm_manager_backup_progress_bytes",
        "Bytes the running backup job has copied so far",
        backup.progress_bytes.clone(),
    );
    registry.register(
        "kvm_manager_backup_last_success_timestamp_seconds",
        "When the last complete backup ended (Unix time)",
        backup.last_success.clone(),
    );
    registry.register(
        "kvm_manager_backup_last_duration_seconds",
        "How long the last complete backup took",
        backup.last_duration.clone(),
    );
    registry.register_collector(Box::new(SpoofedPackets));
    registry
});

/// The OpenMetrics content type of [`render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `/metrics` body.
pub(crate) fn render() -> String {
    let mut out = String::new();
    // Infallible: writing to a String.
    let _ = prometheus_client::encoding::text::encode(&mut out, &REGISTRY);
    out
}

/// Reads the count of spoofed packets the firewall dropped.
pub(crate) type SpoofedReader = fn() -> std::io::Result<u64>;

static SPOOFED: OnceLock<SpoofedReader> = OnceLock::new();

/// Exports the firewall's count of dropped spoofed packets, read by `reader` at each scrape
/// (once per process: later calls are ignored).
pub(crate) fn watch_spoofed(reader: SpoofedReader) {
    let _ = SPOOFED.set(reader);
}

#[derive(Debug)]
struct SpoofedPackets;

impl Collector for SpoofedPackets {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Not exported until the table exists, rather than a made-up zero.
        let Some(Ok(count)) = SPOOFED.get().map(|read| read()) else {
            return Ok(());
        };
        let metric = encoder.encode_descriptor(
            "kvm_manager_spoofed_packets",
            "Packets from the VM with a source address other than VM_IP, dropped",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(count).encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_as_openmetrics() {
        VM.starts.inc();
        VM.phase_took("overlay", Duration::from_millis(1500));
        IMAGE.state(&["downloading", "ready"], "ready");
        let text = render();
        for line in [
            "# TYPE kvm_manager_starts counter",
            "kvm_manager_phase_seconds{phase=\"overlay\"} 1.5",
            "kvm_manager_image_state{state=\"downloading\"} 0",
            "kvm_manager_image_state{state=\"ready\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("kvm_manager_starts_total ")),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_services_count_through_their_handles_and_every_kind_is_exported() {
        DHCP.acks.inc();
        DNS.upstream_query("10.96.0.10:53");
        let text = render();
        for line in [
            "# TYPE kvm_manager_dhcp_replies counter",
            "# HELP kvm_manager_dhcp_replies DHCP replies sent to the VM (ack counts leases and renewals).",
            "kvm_manager_dhcp_replies_total{kind=\"ack\"} 1",
            "kvm_manager_dhcp_replies_total{kind=\"nak\"} 0",
            "kvm_manager_dhcp_packets_total{kind=\"malformed\"} 0",
            "kvm_manager_dns_queries_total{kind=\"all\"} 0",
            "kvm_manager_dns_failures_total{kind=\"dropped\"} 0",
            "kvm_manager_dns_upstream_queries_total{upstream=\"10.96.0.10:53\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_guest_series_are_replaced_as_a_whole() {
        GUEST.agent_up.set(1);
        GUEST.filesystems(&[("/old".into(), Some(1), Some(2))]);
        GUEST.filesystems(&[("/".into(), Some(1024), Some(4096))]);
        GUEST.info(Some(["Debian".into(), "12".into(), "6.1.0".into()]));
        let text = render();
        for line in [
            "kvm_manager_guest_agent_up 1",
            "kvm_manager_guest_filesystem_used_bytes{mountpoint=\"/\"} 1024",
            "kvm_manager_guest_filesystem_size_bytes{mountpoint=\"/\"} 4096",
            "kvm_manager_guest_info{os=\"Debian\",version=\"12\",kernel=\"6.1.0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("/old"), "{text}");
    }

    #[test]
    fn the_firewall_count_of_spoofed_packets_is_read_at_each_scrape() {
        watch_spoofed(|| Ok(42));
        let text = render();
        for line in [
            "# TYPE kvm_manager_spoofed_packets counter",
            "kvm_manager_spoofed_packets_total 42",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}

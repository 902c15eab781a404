//! Prometheus metrics: one registry for the process, rendered on `/metrics` in the OpenMetrics
//! text format by the Prometheus project's client (prometheus-client). It keeps no global
//! recorder and calibrates no clock at start (the `metrics` exporter spun the CPU for 0.6 ms
//! to 200 ms there, on PID 1's critical path).
//!
//! Names (all prefixed `kvm_manager_`): `phase_seconds{phase}` (how long each start phase
//! took), `dhcp_packets_total{kind}`, `dhcp_replies_total{kind}` (ack counts leases and
//! renewals), `dns_queries_total{kind}`, `dns_failures_total{kind}`,
//! `dns_upstream_queries_total{upstream}`, `dns_upstream_failures_total{upstream}`,
//! `image_download_bytes_total`, `image_state{state}`, `qemu_up`,
//! `vm_phase{phase}`, `vm_paused{reason}`, `guest_shutdowns_total{how}`, `starts_total`,
//! `spoofed_packets_total` (packets from the VM with a forged source, dropped: the nft counter,
//! read at each scrape).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::dhcp::DhcpStats;
use crate::dns::DnsStats;
use crate::http::health::Phase;
use crate::qemu::pause::Pause;

/// One label, `name="value"`.
type Label = [(&'static str, String); 1];

/// Every metric this process exports.
struct Metrics {
    registry: Registry,
    starts: Counter,
    phase_seconds: Family<Label, Gauge<f64, AtomicU64>>,
    vm_phase: Family<Label, Gauge>,
    vm_paused: Family<Label, Gauge>,
    qemu_up: Gauge,
    guest_shutdowns: Family<Label, Counter>,
    image_state: Family<Label, Gauge>,
    image_download_bytes: Counter,
    dns_upstream_queries: Family<Label, Counter>,
    dns_upstream_failures: Family<Label, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let starts = Counter::default();
    registry.register(
        "kvm_manager_starts",
        "Starts of this process (a container restart resets it)",
        starts.clone(),
    );
    let phase_seconds = Family::default();
    registry.register(
        "kvm_manager_phase_seconds",
        "How long each start phase took",
        phase_seconds.clone(),
    );
    let vm_phase = Family::default();
    registry.register(
        "kvm_manager_vm_phase",
        "The VM's phase: 1 for the current one",
        vm_phase.clone(),
    );
    let vm_paused = Family::default();
    registry.register(
        "kvm_manager_vm_paused",
        "Why the VM is paused (no-space, io-error, stopped): 1 for the current reason, all 0 while it runs",
        vm_paused.clone(),
    );
    let qemu_up = Gauge::default();
    registry.register("kvm_manager_qemu_up", "1 while qemu runs", qemu_up.clone());
    let guest_shutdowns = Family::default();
    registry.register(
        "kvm_manager_guest_shutdowns",
        "How qemu ended: powered-off, forced or qemu-failed",
        guest_shutdowns.clone(),
    );
    let image_state = Family::default();
    registry.register(
        "kvm_manager_image_state",
        "The base image: 1 for the current state",
        image_state.clone(),
    );
    let image_download_bytes = Counter::default();
    registry.register(
        "kvm_manager_image_download_bytes",
        "Bytes of the base image downloaded by this process",
        image_download_bytes.clone(),
    );
    let dns_upstream_queries = Family::default();
    registry.register(
        "kvm_manager_dns_upstream_queries",
        "Queries forwarded to each pod nameserver",
        dns_upstream_queries.clone(),
    );
    let dns_upstream_failures = Family::default();
    registry.register(
        "kvm_manager_dns_upstream_failures",
        "Forwarded queries a pod nameserver failed or refused",
        dns_upstream_failures.clone(),
    );
    registry.register_collector(Box::new(ServiceCounters));
    registry.register_collector(Box::new(SpoofedPackets));
    Metrics {
        registry,
        starts,
        phase_seconds,
        vm_phase,
        vm_paused,
        qemu_up,
        guest_shutdowns,
        image_state,
        image_download_bytes,
        dns_upstream_queries,
        dns_upstream_failures,
    }
});

/// The running DHCP server's and DNS forwarder's counters, read at each scrape.
static SERVICES: OnceLock<(Arc<DhcpStats>, Arc<DnsStats>)> = OnceLock::new();

fn label(name: &'static str, value: impl Into<String>) -> Label {
    [(name, value.into())]
}

/// The `/metrics` body.
pub fn render() -> String {
    let mut out = String::new();
    // Infallible: writing to a String.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

pub fn start() {
    METRICS.starts.inc();
}

pub fn phase_took(phase: &'static str, took: Duration) {
    METRICS
        .phase_seconds
        .get_or_create(&label("phase", phase))
        .set(took.as_secs_f64());
}

/// Sets `family{label=…}` to 1 for `current` and to 0 for every other of `states`.
fn one_hot(family: &Family<Label, Gauge>, name: &'static str, states: &[&str], current: &str) {
    for &state in states {
        family
            .get_or_create(&label(name, state))
            .set(i64::from(state == current));
    }
}

pub fn set_phase(phase: Phase) {
    let phases = [
        Phase::Starting,
        Phase::Running,
        Phase::ShuttingDown,
        Phase::Stopped,
    ];
    one_hot(
        &METRICS.vm_phase,
        "phase",
        &phases.map(Phase::name),
        phase.name(),
    );
    METRICS.qemu_up.set(i64::from(matches!(
        phase,
        Phase::Running | Phase::ShuttingDown
    )));
}

/// `vm_paused{reason}`: 1 for the reason of `pause`, 0 for every other (all 0 with `None`).
pub fn set_pause(pause: Option<&Pause>) {
    let current = pause.map_or("", Pause::label);
    one_hot(&METRICS.vm_paused, "reason", &Pause::LABELS, current);
}

pub fn image_state(states: &[&str], current: &str) {
    one_hot(&METRICS.image_state, "state", states, current);
}

pub fn image_downloaded(bytes: u64) {
    METRICS.image_download_bytes.inc_by(bytes);
}

pub fn dns_upstream_query(upstream: &str) {
    METRICS
        .dns_upstream_queries
        .get_or_create(&label("upstream", upstream))
        .inc();
}

pub fn dns_upstream_failure(upstream: &str) {
    METRICS
        .dns_upstream_failures
        .get_or_create(&label("upstream", upstream))
        .inc();
}

pub fn guest_shutdown(how: &'static str) {
    METRICS
        .guest_shutdowns
        .get_or_create(&label("how", how))
        .inc();
}

/// Exports the counters of the DHCP server and the DNS forwarder of this process (one pair
/// per process: later calls are ignored).
pub fn watch_services(dhcp: Arc<DhcpStats>, dns: Arc<DnsStats>) {
    let _ = SERVICES.set((dhcp, dns));
}

/// Reads the count of spoofed packets the firewall dropped.
pub type SpoofedReader = fn() -> std::io::Result<u64>;

static SPOOFED: OnceLock<SpoofedReader> = OnceLock::new();

/// Exports the firewall's count of dropped spoofed packets, read by `reader` at each scrape
/// (once per process: later calls are ignored).
pub fn watch_spoofed(reader: SpoofedReader) {
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

#[derive(Debug)]
struct ServiceCounters;

/// A counter family's `kind` label values and their counters.
type Kinds<'a> = &'a [(&'a str, &'a AtomicU64)];

impl Collector for ServiceCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((dhcp, dns)) = SERVICES.get() else {
            return Ok(());
        };
        let families: [(&str, &str, Kinds); 4] = [
            (
                "kvm_manager_dhcp_packets",
                "DHCP packets received from the VM, malformed or ignored",
                &[
                    ("received", &dhcp.received),
                    ("malformed", &dhcp.malformed),
                    ("ignored", &dhcp.ignored),
                ],
            ),
            (
                "kvm_manager_dhcp_replies",
                "DHCP replies sent to the VM (ack counts leases and renewals)",
                &[
                    ("offer", &dhcp.offers),
                    ("ack", &dhcp.acks),
                    ("nak", &dhcp.naks),
                ],
            ),
            (
                "kvm_manager_dns_queries",
                "DNS queries from the VM: all, answered locally, forwarded",
                &[
                    ("all", &dns.queries),
                    ("local", &dns.local),
                    ("forwarded", &dns.forwarded),
                ],
            ),
            (
                "kvm_manager_dns_failures",
                "DNS queries answered SERVFAIL, malformed or dropped",
                &[
                    ("servfail", &dns.servfail),
                    ("malformed", &dns.malformed),
                    ("dropped", &dns.dropped),
                ],
            ),
        ];
        for (name, help, kinds) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for &(kind, value) in kinds {
                ConstCounter::new(value.load(Relaxed))
                    .encode(family.encode_family(&[("kind", kind)])?)?;
            }
        }
        Ok(())
    }
}

pub async fn serve() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_as_openmetrics() {
        start();
        phase_took("overlay", Duration::from_millis(1500));
        image_state(&["downloading", "ready"], "ready");
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

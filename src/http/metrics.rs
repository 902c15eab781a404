//! Prometheus metrics: one recorder for the process, rendered as text on `/metrics`.
//!
//! Names (all prefixed `kvm_manager_`): `phase_seconds{phase}` (how long each start phase
//! took), `dhcp_packets_total{kind}`, `dhcp_replies_total{kind}` (ack counts leases and
//! renewals), `dns_queries_total{kind}`, `dns_failures_total{kind}`,
//! `dns_upstream_queries_total{upstream}`, `dns_upstream_failures_total{upstream}`,
//! `image_download_bytes_total`, `image_state{state}`, `qemu_up`,
//! `vm_phase{phase}`, `guest_shutdowns_total{how}`, `starts_total`.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::health::Phase;
use super::AppState;

/// Handle to the process-wide recorder (installed once).
#[derive(Debug, Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

impl Metrics {
    /// Installs the recorder on first use; later calls share it.
    pub fn install() -> Self {
        let handle = HANDLE.get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "metrics are disabled: could not install the recorder");
                None
            }
        });
        Self {
            handle: handle.clone(),
        }
    }

    pub fn render(&self) -> String {
        self.handle
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default()
    }
}

pub fn phase_took(phase: &'static str, took: Duration) {
    metrics::gauge!("kvm_manager_phase_seconds", "phase" => phase).set(took.as_secs_f64());
}

/// Sets the gauge `name{label=…}` to 1 for `current` and to 0 for every other of `states`.
pub fn one_hot(name: &'static str, label: &'static str, states: &[&'static str], current: &str) {
    for &state in states {
        metrics::gauge!(name, label => state).set(if state == current { 1.0 } else { 0.0 });
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
        "kvm_manager_vm_phase",
        "phase",
        &phases.map(Phase::name),
        phase.name(),
    );
    metrics::gauge!("kvm_manager_qemu_up").set(
        if matches!(phase, Phase::Running | Phase::ShuttingDown) {
            1.0
        } else {
            0.0
        },
    );
}

pub fn guest_shutdown(how: &'static str) {
    metrics::counter!("kvm_manager_guest_shutdowns_total", "how" => how).increment(1);
}

/// Copies the DHCP server's and the DNS forwarder's counters into the registry.
pub fn dhcp_and_dns(dhcp: &crate::dhcp::DhcpStats, dns: &crate::dns::DnsStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let set = |name: &'static str, kind: &'static str, value: &std::sync::atomic::AtomicU64| {
        metrics::counter!(name, "kind" => kind).absolute(value.load(Relaxed));
    };
    set("kvm_manager_dhcp_packets_total", "received", &dhcp.received);
    set(
        "kvm_manager_dhcp_packets_total",
        "malformed",
        &dhcp.malformed,
    );
    set("kvm_manager_dhcp_packets_total", "ignored", &dhcp.ignored);
    set("kvm_manager_dhcp_replies_total", "offer", &dhcp.offers);
    set("kvm_manager_dhcp_replies_total", "ack", &dhcp.acks);
    set("kvm_manager_dhcp_replies_total", "nak", &dhcp.naks);
    set("kvm_manager_dns_queries_total", "all", &dns.queries);
    set("kvm_manager_dns_queries_total", "local", &dns.local);
    set("kvm_manager_dns_queries_total", "forwarded", &dns.forwarded);
    set("kvm_manager_dns_failures_total", "servfail", &dns.servfail);
    set(
        "kvm_manager_dns_failures_total",
        "malformed",
        &dns.malformed,
    );
    set("kvm_manager_dns_failures_total", "dropped", &dns.dropped);
}

pub(crate) async fn render(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

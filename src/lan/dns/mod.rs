//! The DNS forwarder for the VM on `VM_GW:53` (UDP and TCP): relays to every nameserver of the
//! pod's resolv.conf and answers the VM's own hostname locally.
//!
//! [`crate::lan::ResolvConf`] holds the pod's resolver settings, [`query`] decides per query (pure),
//! [`upstream`] relays, [`forwarder`] listens.

pub mod exchange;
pub mod forwarder;
pub mod query;
pub mod upstream;

use std::sync::Arc;

use tokio::task::AbortHandle;

use crate::config::DnsMode;
use crate::lan::{DropLog, Lan, LogLimits, ResolvConfError};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(
        "could not listen on {ip}:53 ({transport}) on bridge {bridge} (does the bridge carry \
         VM_GW?)"
    )]
    Bind {
        ip: std::net::Ipv4Addr,
        bridge: String,
        transport: &'static str,
        #[source]
        source: std::io::Error,
    },
    // Its own message names the file and why it is needed: not said twice.
    #[error(transparent)]
    ResolvConf(#[from] ResolvConfError),
}

/// A running forwarder; dropping it stops it.
#[derive(Debug)]
pub struct DnsServer {
    tasks: Vec<AbortHandle>,
}

impl DnsServer {
    /// False in `passthrough` mode, where the VM talks to the pod's nameservers directly.
    pub fn enabled(&self) -> bool {
        !self.tasks.is_empty()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.tasks.iter().for_each(AbortHandle::abort);
    }
}

/// Binds `VM_GW:53` (UDP and TCP) on the bridge and serves in tasks of the current runtime.
/// In `passthrough` mode nothing is bound.
pub async fn serve(cfg: &Lan) -> Result<DnsServer, DnsError> {
    if cfg.dns_mode == DnsMode::Passthrough {
        tracing::info!("DNS_MODE=passthrough; the VM uses the pod's nameservers directly");
        return Ok(DnsServer { tasks: Vec::new() });
    }
    let bind_error = |transport| {
        let (ip, bridge) = (cfg.vm_gw, cfg.bridge.clone());
        move |source| DnsError::Bind {
            ip,
            bridge,
            transport,
            source,
        }
    };
    let udp = forwarder::bind_udp(&cfg.bridge, cfg.vm_gw).map_err(bind_error("udp"))?;
    let tcp = forwarder::bind_tcp(&cfg.bridge, cfg.vm_gw).map_err(bind_error("tcp"))?;
    let (upstreams, mut tasks) = upstream::Upstreams::open(
        &cfg.resolv.nameservers,
        cfg.resolv.timeout,
        cfg.vm_gw.into(),
    );
    if upstreams.is_empty() {
        tracing::warn!("the pod's resolv.conf names no usable nameserver; the VM gets SERVFAIL for every name but its own");
    }
    let shared = Arc::new(forwarder::Shared {
        local: query::LocalNames::new(
            cfg.hostname.as_str(),
            cfg.resolv.search.first().map(String::as_str),
            cfg.vm_ip,
        ),
        upstreams,
        malformed: std::sync::Mutex::new(DropLog::new("DNS")),
        lines: std::sync::Mutex::new(LogLimits::default()),
    });
    tracing::info!(listen = %cfg.vm_gw, upstreams = ?cfg.resolv.nameservers, "serving DNS");
    tasks.push(tokio::spawn(forwarder::serve_udp(udp, Arc::clone(&shared))).abort_handle());
    tasks.push(tokio::spawn(forwarder::serve_tcp(tcp, shared)).abort_handle());
    Ok(DnsServer { tasks })
}

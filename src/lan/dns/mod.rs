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
        "could not listen on {ip} port 53 ({transport}) on bridge {bridge} (does the bridge \
         carry VM_GW, or VM_GW6?)"
    )]
    Bind {
        ip: std::net::IpAddr,
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
    let bind_error = |transport, ip: std::net::IpAddr| {
        let bridge = cfg.bridge.clone();
        move |source| DnsError::Bind {
            ip,
            bridge,
            transport,
            source,
        }
    };
    let gw = cfg.vm_gw.into();
    let udp = forwarder::bind_udp(&cfg.bridge, gw).map_err(bind_error("udp", gw))?;
    let tcp = forwarder::bind_tcp(&cfg.bridge, gw).map_err(bind_error("tcp", gw))?;
    // Issue 23: the same forwarder on VM_GW6, which our RAs and DHCPv6 name.
    let v6 = match &cfg.ipv6 {
        Some(v6) => {
            let gw6 = v6.gw.into();
            Some((
                forwarder::bind_udp(&cfg.bridge, gw6).map_err(bind_error("udp", gw6))?,
                forwarder::bind_tcp(&cfg.bridge, gw6).map_err(bind_error("tcp", gw6))?,
            ))
        }
        None => None,
    };
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
    if let Some((udp6, tcp6)) = v6 {
        tracing::info!(listen = %udp6.local_addr().map(|a| a.ip().to_string()).unwrap_or_default(), "serving DNS over IPv6");
        tasks.push(tokio::spawn(forwarder::serve_udp(udp6, Arc::clone(&shared))).abort_handle());
        tasks.push(tokio::spawn(forwarder::serve_tcp(tcp6, Arc::clone(&shared))).abort_handle());
    }
    tasks.push(tokio::spawn(forwarder::serve_tcp(tcp, shared)).abort_handle());
    Ok(DnsServer { tasks })
}

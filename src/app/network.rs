//! `run`'s network around qemu, in either mode: NAT (the ruleset applied and DHCP/DNS started
//! while qemu starts) or passt (started before qemu, which connects to its socket); then
//! readiness from the lease, supervision (passt dying stops the VM: exit 4; swtpm: exit 9) and
//! teardown.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::companions::Companions;
use super::phase::timed;
use crate::config::{Config, ReadyOn};
use crate::error::Error;
use crate::http::{Readiness, VmStatus};
use crate::lan::{Lan, Services};
use crate::net::passt::child::{self, Passt};
use crate::net::{self, Wiring};
use crate::pid1::Pid1;
use crate::qemu::process::{Outcome, Qemu};
use crate::qemu::{self, QemuError};

/// What serves the VM's network while qemu runs.
pub(super) enum Attached {
    Nat(Services),
    Passt {
        passt: Passt,
        /// `READY_PORT` of the pod IP: the guest's, through passt.
        ready: SocketAddr,
    },
}

/// How often passt mode's readiness asks the guest until it answers, and then (each check
/// wakes passt and the guest too, so an idle VM is asked rarely) after it answered.
const READY_EVERY: Duration = Duration::from_secs(2);
const READY_RECHECK: Duration = Duration::from_secs(30);

/// Starts qemu with `argv` and what its network needs per `wiring`. A failure of either
/// stops the other again.
pub(super) async fn start(
    config: &Config,
    pid1: &Pid1,
    wiring: &Wiring,
    launch: &qemu::args::Launch,
    password: Option<&str>,
) -> Result<(Qemu, Attached), Error> {
    let argv: Vec<OsString> = qemu::args::build(launch);
    let start_qemu = || {
        timed(
            "qemu-start",
            qemu::process::start(pid1, &argv, &launch.qmp_socket, password),
        )
    };
    match wiring {
        // qemu starts while the NAT is applied and DHCP and DNS start: its disk, config drive,
        // tap and bridge (all qemu needs) are ready, and the guest sends its first packet
        // seconds later.
        Wiring::Nat { plan, nft } => {
            let (vm, nat, services) = tokio::join!(
                start_qemu(),
                timed("nat", net::apply_nat(plan, nft, pid1.reaper())),
                timed("services", async {
                    Services::start(&Lan::load(config, plan)?).await
                }),
            );
            let vm = vm?;
            match nat.map_err(Error::from).and_then(|wake| {
                let mut services = services?;
                services.watch_spoofed(wake);
                Ok(services)
            }) {
                Ok(services) => Ok((vm, Attached::Nat(services))),
                Err(e) => {
                    vm.kill().await;
                    Err(e)
                }
            }
        }
        // qemu 7.2's stream client connects once, at start: passt's socket must be there.
        Wiring::Passt(plan) => {
            let passt = timed("passt", child::start(plan, pid1.reaper())).await?;
            match start_qemu().await {
                Ok(vm) => {
                    let ready = SocketAddr::from((plan.pod_ip, config.net.ready_port));
                    Ok((vm, Attached::Passt { passt, ready }))
                }
                Err(e) => {
                    passt.stop().await;
                    Err(e.into())
                }
            }
        }
    }
}

impl Attached {
    /// Feeds readiness until the runtime ends: from our DHCP server's lease (NAT), or from
    /// the guest answering on `READY_PORT` of the pod IP (passt, which reports no lease).
    /// `NETWORK_MODE` as it was decided (`/status`).
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Attached::Nat(_) => "nat",
            Attached::Passt { .. } => "passt",
        }
    }

    /// The guest's IPv4 address: `VM_IP` behind the NAT, the pod's own through passt.
    pub(super) fn guest_ip(&self, config: &Config) -> std::net::Ipv4Addr {
        match self {
            Attached::Nat(_) => config.net.slash30.vm(),
            Attached::Passt { ready, .. } => match ready.ip() {
                std::net::IpAddr::V4(ip) => ip,
                std::net::IpAddr::V6(_) => config.net.slash30.vm(),
            },
        }
    }

    /// In passt mode, whose passt reports no lease, `READY_ON=lease|port` both mean the guest
    /// answering on `READY_PORT` of the pod IP; `READY_ON=agent` stays as it is.
    pub(super) fn report(&self, status: &Arc<VmStatus>, ready_on: ReadyOn) {
        let status = Arc::clone(status);
        match self {
            Attached::Nat(services) => {
                let mut leased = services.dhcp().lease_watch();
                tokio::spawn(async move {
                    loop {
                        status.set_lease(*leased.borrow_and_update());
                        if leased.changed().await.is_err() {
                            return;
                        }
                    }
                });
            }
            Attached::Passt { .. } if ready_on == ReadyOn::Agent => {}
            Attached::Passt { ready, .. } => {
                let ready = *ready;
                status.set_readiness(Readiness::GuestPort(ready));
                tokio::spawn(async move {
                    loop {
                        let answers = child::guest_answers(ready).await;
                        status.set_lease(answers);
                        let next = if answers { READY_RECHECK } else { READY_EVERY };
                        crate::timer::sleep(next).await;
                    }
                });
            }
        }
    }

    /// Runs the VM until qemu exits (SIGTERM: the graceful ladder). passt, swtpm (`tpm`) or a
    /// virtio-fs share's virtiofsd dying stops the VM the same graceful way and is the error.
    pub(super) async fn supervise(
        &mut self,
        vm: Qemu,
        pid1: &Pid1,
        shutdown_timeout: Duration,
        companions: &mut Companions,
    ) -> Result<Outcome, Error> {
        let with_companions = !companions.is_empty();
        let child_died = companions.died();
        let (outcome, died): (Result<Outcome, QemuError>, Option<Error>) = match self {
            Attached::Nat(_) if !with_companions => {
                (vm.supervise(pid1, shutdown_timeout).await, None)
            }
            Attached::Nat(_) => {
                vm.supervise_unless(pid1, shutdown_timeout, child_died)
                    .await
            }
            Attached::Passt { passt, .. } => {
                let fatal = async {
                    tokio::select! {
                        e = passt.died() => Error::from(e),
                        e = child_died => e,
                    }
                };
                vm.supervise_unless(pid1, shutdown_timeout, fatal).await
            }
        };
        match died {
            Some(e) => {
                tracing::error!(error = %crate::logging::render_chain(&e), "a program the VM depends on died: stopping the VM");
                // The VM's end is reported; how it ended is secondary to why.
                if let Ok(outcome) = &outcome {
                    tracing::info!(status = %outcome.status, forced = outcome.forced, "qemu stopped");
                }
                Err(e)
            }
            None => Ok(outcome?),
        }
    }

    /// Stops what served the network (passt; our servers stop when dropped).
    pub(super) async fn stop(self) {
        match self {
            Attached::Nat(services) => drop(services),
            Attached::Passt { passt, .. } => passt.stop().await,
        }
    }
}

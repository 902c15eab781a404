//! Which way `run` (and `qemu-args`) wire the VM to the pod: the mode decided, the pod
//! discovered, and the NAT's plan (its links applied) or passt's plan.

use std::path::{Path, PathBuf};

use macaddr::MacAddr6;

use super::{apply_links, discover, mode, passt, plan, NetError, NetPlan};
use crate::config::NetConfig;

/// How the VM reaches the pod network, decided (and for NAT, its links applied).
#[derive(Debug)]
pub(crate) enum Wiring {
    /// Bridge and tap are up; `nft` applies the NAT beside qemu's start.
    Nat { plan: NetPlan, nft: PathBuf },
    /// passt still to be started, before qemu.
    Passt(passt::PasstPlan),
}

/// Decides the mode (one log line says which and why), discovers the pod, and plans; with
/// `apply`, NAT's links are made (`run`); without, nothing changes (`qemu-args`). `queues`:
/// the NIC's queue pairs in NAT mode (a multiqueue tap above 1).
pub(crate) async fn wire(
    config: &NetConfig,
    runtime_dir: &Path,
    vm_mac: MacAddr6,
    apply: bool,
    queues: u32,
) -> Result<Wiring, NetError> {
    let choice = mode::decide(config.mode, &mode::probe())?;
    if apply {
        tracing::info!(mode = %choice.mode, reason = choice.reason, "network mode");
    }
    let pod = discover().await?;
    match choice.mode {
        mode::Mode::Passt { binary } => Ok(Wiring::Passt(passt::plan(
            config,
            binary,
            runtime_dir,
            &pod,
            vm_mac,
            &passt::child::probe(),
        ))),
        mode::Mode::Nat => {
            let mut plan = plan(config, &pod, vm_mac)?;
            plan.queues = queues;
            let nft = if apply {
                apply_links(&plan).await?
            } else {
                PathBuf::from("nft")
            };
            Ok(Wiring::Nat { plan, nft })
        }
    }
}

//! The guest agent beside a running VM: polling, `/status`, freeze and thaw (HTTP and the
//! control socket), and the agent's part in the shutdown.

use std::sync::Arc;

use super::network::Attached;
use crate::config::Config;
use crate::http::{GuestLink, VmStatus};
use crate::qemu::agent::{control, Guest};
use crate::qemu::args::Launch;
use crate::qemu::process::Qemu;

/// Starts polling the agent of `vm`, shows it on `status`, opens the control socket, and
/// lets the shutdown ladder use it.
pub(super) fn start(
    config: &Config,
    launch: &Launch,
    vm: &mut Qemu,
    status: &VmStatus,
    attached: &Attached,
) -> Guest {
    let guest = Guest::start(
        &config.runtime_dir,
        vm.qmp.clone(),
        config.agent.poll_interval,
        config.agent.freeze_timeout,
        config.agent.ssh_keys.clone(),
    );
    vm.agent = Some(Arc::clone(&guest.agent));
    status.set_guest(Some(GuestLink {
        guest: guest.clone(),
        vm_ip: attached.guest_ip(config),
        mac: launch
            .nic
            .as_ref()
            .map(|nic| nic.mac.to_string().to_ascii_lowercase())
            .unwrap_or_default(),
        network: attached.mode(),
    }));
    let socket = control::socket_path(&config.runtime_dir);
    if let Err(e) = control::serve(&socket, Arc::clone(&guest.freezer)) {
        tracing::warn!(error = %crate::logging::render_chain(&e), "`kvm-manager freeze` and `thaw` are unavailable");
    }
    guest
}

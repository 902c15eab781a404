//! `kvm-manager run`: every phase in order, then qemu under supervision until it exits.
//!
//! Order: HTTP first (probes answer 503 while we prepare), the state, then at once the state
//! file, the base image and the pet overlay, the config drive and the network links, then qemu
//! and, at the same time, the NAT and DHCP and DNS (in passt mode: passt, then qemu; see
//! [`super::network`]). A SIGTERM before qemu starts stops the preparation (a partial download
//! stays for resume) and exits 128+N; once qemu runs, it starts the graceful shutdown ladder.
//! DHCP and DNS (or passt) serve until qemu is gone.
//!
//! Before all of it, `run` takes the pet's [owner lock](image::owner) and holds it until it
//! returns: the state, the overlay and the VM are this process's alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::config::{Config, ImageTarget, ReadyOn, VNC_PORT};
use crate::error::{exit, Error};
use crate::http::{self, webconsole, Phase, Readiness, VmStatus};
use crate::pid1::Pid1;
use crate::qemu::process::Qemu;
use crate::qemu::{self, attach, QemuError};
use crate::{configdrive, image, metrics, net, state};

use super::companions::Companions;
use super::launch;
use super::network::Attached;
use super::phase::{timed, timed_blocking};

pub(super) async fn run(config: &Config, target: &ImageTarget) -> Result<u8, Error> {
    // Before the HTTP server: a second `run` in the same pod is refused as a second owner (exit
    // 8), not as a port already in use, and it changes nothing.
    let _owner = image::owner::acquire(&config.pet_dir, &config.hostname, "run")?;
    let pid1 = Pid1::start()?;
    metrics::VM.starts.inc();
    let status = serve_http(config).await?;

    // Dropping `prepare` on SIGTERM cancels a download; its partial file stays for resume.
    let (launch, network) = tokio::select! {
        prepared = prepare(config, target) => prepared?,
        signal = pid1.shutdown_requested() => {
            tracing::info!(%signal, "stopping before the VM started");
            return Ok(128u8.wrapping_add(signal as i32 as u8));
        }
    };

    let mut companions = Companions::start(config, &launch, &pid1).await?;
    let (vm, attached) = match start(config, &pid1, &launch, &network).await {
        Ok(started) => started,
        Err(e) => {
            companions.stop().await;
            return Err(e);
        }
    };
    let code = supervise(
        config,
        &pid1,
        vm,
        attached,
        &status,
        &launch,
        &mut companions,
    )
    .await;
    companions.stop().await;
    code
}

/// The probes (503 while we prepare) and the web console, when HTTP_PORT is set.
async fn serve_http(config: &Config) -> Result<Arc<VmStatus>, Error> {
    let readiness = match config.agent.ready_on {
        ReadyOn::Port => Readiness::TcpPort(SocketAddr::from((
            config.net.slash30.vm(),
            config.net.ready_port,
        ))),
        ReadyOn::Agent => Readiness::Agent,
        ReadyOn::Lease => Readiness::Lease,
    };
    let status = Arc::new(VmStatus::new(readiness));
    status.set_phase(Phase::Starting);
    let console_access = (!config.net.no_vnc).then_some(match config.vm.vnc_password {
        Some(_) => webconsole::Access::Password,
        None => webconsole::Access::Loopback,
    });
    if let Some(port) = config.net.http_port {
        let http_config = http::HttpConfig {
            port,
            console: webconsole::ConsoleConfig {
                novnc_dir: config.novnc_dir.clone(),
                vnc: console_access.map(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, VNC_PORT))),
                access: console_access.unwrap_or(webconsole::Access::Loopback),
                idle_timeout: config.vm.console_idle_timeout,
            },
            control_token: config.agent.control_token.as_ref().map(|t| t.0.clone()),
        };
        http::serve(&http_config, Arc::clone(&status)).await?;
    }
    webconsole::announce(console_access, config.net.http_port, VNC_PORT);
    Ok(status)
}

/// Starts qemu and what its network needs (see [`super::network::start`]).
async fn start(
    config: &Config,
    pid1: &Pid1,
    launch: &qemu::args::Launch,
    network: &net::Wiring,
) -> Result<(Qemu, Attached), Error> {
    let password = config
        .vm
        .vnc_password
        .as_ref()
        .filter(|_| !config.net.no_vnc)
        .map(|s| s.0.as_str());
    super::network::start(config, pid1, network, launch, password).await
}

/// The running VM: the probes and metrics follow the lease and pauses, `kvm-manager console`
/// attaches, and a SIGTERM starts the shutdown ladder; returns the exit code once qemu is gone.
/// DHCP and DNS (or passt) serve until then.
async fn supervise(
    config: &Config,
    pid1: &Pid1,
    mut vm: Qemu,
    mut attached: Attached,
    status: &Arc<VmStatus>,
    launch: &qemu::args::Launch,
    companions: &mut Companions,
) -> Result<u8, Error> {
    let guest = super::guest::start(config, launch, &mut vm, status, &attached);
    attached.report(status, config.agent.ready_on);
    status.set_qmp(Some(vm.qmp.clone()));
    // Issue 22: backups of the running VM.
    let backups = super::backup::start(config, launch, vm.qmp.clone(), Arc::clone(&guest.freezer));
    status.set_backups(Some(Arc::clone(&backups)));
    follow_pauses(
        qemu::process::watch_pauses(vm.qmp.clone(), config.pet_dir.clone()),
        status,
    );
    status.set_phase(Phase::Running);
    let console_socket = attach::socket_path(&config.runtime_dir);
    if let Err(e) = attach::serve(
        &console_socket,
        Arc::clone(&vm.console),
        vm.console_raw.clone(),
        vm.console_input.clone(),
    ) {
        tracing::warn!(error = %crate::logging::render_chain(&e), "`kvm-manager console` is unavailable");
    }
    let stopping = async {
        pid1.shutdown_requested().await;
        status.set_phase(Phase::ShuttingDown);
        guest.freezer.thaw_if_frozen().await;
        std::future::pending::<()>().await;
    };
    let outcome = tokio::select! {
        outcome = attached.supervise(vm, pid1, config.vm.shutdown_timeout, companions) => outcome,
        () = stopping => unreachable!("pending() never completes"),
    };
    status.set_phase(Phase::Stopped);
    status.set_qmp(None);
    status.set_guest(None);
    status.set_backups(None);
    attached.stop().await;
    Ok(exit_code(&outcome?))
}

/// Feeds the probes and metrics from the pause watcher until qemu's QMP connection closes.
fn follow_pauses(
    mut pauses: tokio::sync::watch::Receiver<Option<qemu::pause::Pause>>,
    status: &Arc<VmStatus>,
) {
    let status = Arc::clone(status);
    tokio::spawn(async move {
        loop {
            status.set_pause(pauses.borrow_and_update().clone());
            if pauses.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Exit 0 when the guest powered off; 7 when it had to be stopped; qemu's code otherwise.
fn exit_code(outcome: &qemu::process::Outcome) -> u8 {
    if outcome.forced {
        metrics::VM.shutdown("forced");
        tracing::error!(status = %outcome.status, "the guest did not power off in time; qemu was stopped");
        return exit::SHUTDOWN_FORCED;
    }
    if outcome.status.success() {
        metrics::VM.shutdown("powered-off");
        tracing::info!("the guest powered off");
        return 0;
    }
    metrics::VM.shutdown("qemu-failed");
    tracing::error!(status = %outcome.status, stderr = %outcome.stderr.join("\n"), "qemu ended with an error");
    outcome.status.code()
}

/// Runs blocking file work on one of tokio's blocking threads, so that it overlaps the
/// network setup; a panic there is a panic here.
async fn on_worker<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Everything qemu needs. After the state is decided (in memory), five things at once, because
/// each mostly waits on the kernel or the network: the state file (fsynced, on a worker
/// thread; at a first boot under `FIRMWARE=auto`, once the base says which firmware); the base
/// image, then the pet overlay (fsynced, on another, so the two syncs overlap); the config
/// drive (on a third); `INSTALL_MEDIA` when it is a URL; the bridge and the tap (here). The
/// first failure ends the preparation at once, so a broken network does not wait for a
/// download; work already on a worker thread finishes before the process exits (the runtime
/// waits for it).
async fn prepare(
    config: &Config,
    target: &ImageTarget,
) -> Result<(qemu::args::Launch, net::Wiring), Error> {
    // PET_DIR exists: the owner lock, taken first, created it (or failed naming PET_DIR).
    std::fs::create_dir_all(&config.runtime_dir).map_err(|source| QemuError::RuntimeDir {
        path: config.runtime_dir.clone(),
        source,
    })?;
    let mut loaded = state::load(&config.pet_dir, &config.hostname, config.net.vm_mac)?;
    let existed = launch::booted_before(config, loaded.existed);
    let record = loaded.state.firmware.clone();
    // `None`: FIRMWARE=auto decides from the base, once it is here.
    let decided = launch::firmware(config, existed, record.as_ref())?;
    let (mac, state) = (loaded.state.mac(), loaded.state.clone());
    let instance_id = state.instance_id.clone();

    let queues = launch::nic_queues(config)?;
    let (base_ready, base_known) = tokio::sync::oneshot::channel::<image::BaseImage>();
    // The state is written with its firmware record, never without: a state without one
    // means a VM that booted BIOS (see `qemu::firmware::recorded`).
    let state_saved = async {
        let firmware = match decided {
            Some(plan) => plan,
            None => {
                // The sender is dropped only when the disk failed, and its error ends `prepare`.
                let Ok(base) = base_known.await else {
                    return std::future::pending().await;
                };
                let path = base.path.clone();
                let found = on_worker(move || launch::detect_boot(&base)).await;
                launch::firmware_detected(config, existed, record.as_ref(), &path, found, true)?
            }
        };
        loaded.record_firmware(firmware.record.clone())?;
        // The variable store after the state: a store whose record is lost would be re-created.
        let uefi = firmware.uefi.clone();
        on_worker(move || {
            loaded.persist()?;
            if let Some((uefi, action)) = uefi {
                launch::prepare_vars(&uefi, action)?;
            }
            Ok::<_, Error>(())
        })
        .await?;
        Ok::<_, Error>(firmware)
    };
    let disk = async {
        let base = timed("image", image::ensure_base(&config.image, target)).await?;
        // Nobody waits when the firmware was already decided.
        let _ = base_ready.send(base.clone());
        let overlay_path = config.overlay_path();
        let disk_size = config.vm.disk_size;
        on_worker(move || {
            let overlay = timed_blocking("overlay", || {
                image::ensure_overlay(&base, &overlay_path, disk_size)
            })?;
            tracing::info!(base = %base.path.display(), overlay = %overlay.path.display(), virtual_size = overlay.virtual_size, created = overlay.created, "disk ready");
            Ok::<_, Error>(base)
        })
        .await
    };
    let drive = {
        let iso = launch::config_drive_path(config);
        let (drive, hostname) = (config.config_drive.clone(), config.hostname.clone());
        let (ignition_mode, runtime_dir) = (config.guest_io.ignition, config.runtime_dir.clone());
        on_worker(move || {
            if let Some(iso) = iso {
                timed_blocking("config-drive", || {
                    configdrive::write(&drive, &hostname, &state, &iso)
                })?;
            }
            let ignition =
                configdrive::ignition::prepare(ignition_mode, &drive.userdata, &runtime_dir, true)?;
            Ok::<_, Error>(ignition)
        })
    };
    // INSTALL_MEDIA as a URL: fetched beside the base, at the same time.
    let media = async {
        if let Some((image, target)) = launch::media_fetch(config) {
            let media = image::ensure_media(&image, &target).await?;
            tracing::info!(path = %media.path.display(), "INSTALL_MEDIA ready");
        }
        Ok::<_, Error>(())
    };
    let network = async {
        let wiring = timed(
            "network",
            net::wire(&config.net, &config.runtime_dir, mac, true, queues),
        )
        .await?;
        match &wiring {
            net::Wiring::Nat { plan, .. } => {
                tracing::info!(bridge = %plan.bridge, tap = %plan.tap, pod_ip = %plan.pod_ip, vm_ip = %plan.slash30.vm(), mtu = plan.mtu, "network links ready");
            }
            net::Wiring::Passt(plan) => {
                tracing::info!(socket = %plan.socket.display(), mtu = plan.mtu, "passt planned: the VM gets the pod's own address");
            }
        }
        Ok::<_, Error>(wiring)
    };
    let (firmware, base, ignition, wiring, ()) =
        tokio::try_join!(state_saved, disk, drive, network, media)?;
    let launch = launch::decide(
        config,
        Some(&wiring),
        Some(&base),
        ignition.as_ref(),
        &firmware,
        &instance_id,
    )?;
    Ok((launch, wiring))
}

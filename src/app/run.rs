//! `kvm-manager run`: every phase in order, then qemu under supervision until it exits.
//!
//! Order: HTTP first (probes answer 503 while we prepare), the state, then at once the state
//! file, the base image and the pet overlay, the config drive and the network links, then qemu
//! and, at the same time, the NAT and DHCP and DNS. A SIGTERM before qemu starts stops the
//! preparation (a partial download stays for resume) and exits 128+N; once qemu runs, it
//! starts the graceful shutdown ladder. DHCP and DNS serve until qemu is gone.
//!
//! Before all of it, `run` takes the pet's [owner lock](image::owner) and holds it until it
//! returns: the state, the overlay and the VM are this process's alone.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, ReadyOn, VNC_PORT};
use crate::error::{exit, Error};
use crate::http::{self, webconsole, Phase, Readiness, VmStatus};
use crate::lan::{Lan, Services};
use crate::pid1::Pid1;
use crate::qemu::{self, attach, QemuError};
use crate::{configdrive, image, metrics, net, state};

use super::launch;

pub(super) async fn run(config: &Config) -> Result<u8, Error> {
    // Before the HTTP server: a second `run` in the same pod is refused as a second owner (exit
    // 8), not as a port already in use, and it changes nothing.
    let _owner = image::owner::acquire(&config.pet_dir, &config.hostname, "run")?;
    let pid1 = Pid1::start()?;
    metrics::VM.starts.inc();
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

    // Dropping `prepare` on SIGTERM cancels a download; its partial file stays for resume.
    let (launch, network) = tokio::select! {
        prepared = prepare(config) => prepared?,
        signal = pid1.shutdown_requested() => {
            tracing::info!(%signal, "stopping before the VM started");
            return Ok(128u8.wrapping_add(signal as i32 as u8));
        }
    };

    let argv = qemu::args::build(&launch);
    let password = config
        .vm
        .vnc_password
        .as_ref()
        .filter(|_| !config.net.no_vnc)
        .map(|s| s.0.as_str());
    // qemu starts while the NAT is applied and DHCP and DNS start: its disk, config drive, tap
    // and bridge (all qemu needs) are ready, and the guest sends its first packet seconds
    // later. A failure of either stops qemu again.
    let (vm, nat, services) = tokio::join!(
        timed(
            "qemu-start",
            qemu::process::start(&pid1, &argv, &launch.qmp_socket, password),
        ),
        timed(
            "nat",
            net::apply_nat(&network.plan, &network.nft, pid1.reaper()),
        ),
        timed("services", async {
            Services::start(&Lan::load(config, &network.plan)?).await
        }),
    );
    let mut vm = vm?;
    let services = match nat.map_err(Error::from).and(services.map_err(Error::from)) {
        Ok(services) => services,
        Err(e) => {
            vm.kill().await;
            return Err(e);
        }
    };
    let guest = super::guest::start(config, &launch, &mut vm, &status);
    report(&services, &status);
    status.set_qmp(Some(vm.qmp.clone()));
    follow_pauses(
        qemu::process::watch_pauses(vm.qmp.clone(), config.pet_dir.clone()),
        &status,
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
        outcome = vm.supervise(&pid1, config.vm.shutdown_timeout) => outcome,
        () = stopping => unreachable!("pending() never completes"),
    };
    status.set_phase(Phase::Stopped);
    status.set_qmp(None);
    status.set_guest(None);
    drop(services);
    Ok(exit_code(&outcome?))
}

/// Feeds readiness from the lease until the runtime ends.
fn report(services: &Services, status: &Arc<VmStatus>) {
    let status = Arc::clone(status);
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

/// Runs one phase, logging and recording how long it took.
async fn timed<T>(phase: &'static str, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let result = work.await;
    phase_done(phase, started.elapsed());
    result
}

/// [`timed`] for blocking work.
fn timed_blocking<T>(phase: &'static str, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = work();
    phase_done(phase, started.elapsed());
    result
}

fn phase_done(phase: &'static str, took: Duration) {
    metrics::VM.phase_took(phase, took);
    tracing::info!(
        phase,
        took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        "phase done"
    );
}

/// Runs blocking file work on one of tokio's blocking threads, so that it overlaps the
/// network setup; a panic there is a panic here.
async fn on_worker<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The network once its links are up; the NAT is applied beside qemu's start.
struct Network {
    plan: net::NetPlan,
    nft: std::path::PathBuf,
}

/// Everything qemu needs. After the state is decided (in memory), four things at once, because
/// each mostly waits on the kernel or the network: the state file (fsynced, on a worker
/// thread); the base image, then the pet overlay (fsynced, on another, so the two syncs
/// overlap); the config drive (on a third); the bridge and the tap (here). The first failure
/// ends the preparation at once, so a broken network does not wait for a download; work
/// already on a worker thread finishes before the process exits (the runtime waits for it).
async fn prepare(config: &Config) -> Result<(qemu::args::Launch, Network), Error> {
    // PET_DIR exists: the owner lock, taken first, created it (or failed naming PET_DIR).
    std::fs::create_dir_all(&config.runtime_dir).map_err(|source| QemuError::RuntimeDir {
        path: config.runtime_dir.clone(),
        source,
    })?;
    let loaded = state::load(&config.pet_dir, &config.hostname, config.net.vm_mac)?;
    let (mac, state) = (loaded.state.mac(), loaded.state.clone());

    let state_saved = on_worker(move || loaded.persist().map_err(Error::from));
    let disk = async {
        let base = timed("image", image::ensure_base(&config.image)).await?;
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
        on_worker(move || {
            if let Some(iso) = iso {
                timed_blocking("config-drive", || {
                    configdrive::write(&drive, &hostname, &state, &iso)
                })?;
            }
            Ok::<_, Error>(())
        })
    };
    let network = async {
        let (plan, nft) = timed("network", async {
            let pod = net::discover().await?;
            let plan = net::plan(&config.net, &pod, mac)?;
            let nft = net::apply_links(&plan).await?;
            Ok::<_, Error>((plan, nft))
        })
        .await?;
        tracing::info!(bridge = %plan.bridge, tap = %plan.tap, pod_ip = %plan.pod_ip, vm_ip = %plan.slash30.vm(), mtu = plan.mtu, "network links ready");
        Ok::<_, Error>((plan, nft))
    };
    let ((), base, (), (plan, nft)) = tokio::try_join!(state_saved, disk, drive, network)?;
    let launch = launch::decide(config, Some(&plan), Some(&base))?;
    Ok((launch, Network { plan, nft }))
}

//! The only place that sequences phases: parse, log, then run the chosen subcommand.

mod backup;
mod companions;
mod guest;
mod launch;
mod network;
mod phase;
mod run;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::config::{self, Config, Hostname, ImageTarget};
use crate::error::Error;
use crate::image::{self, owner, ImageError};
use crate::lan::{Lan, Services};
use crate::logging::{self, render_chain, Sink};
use crate::net;
use crate::pid1::reaper::{self, Stdio};
use crate::pid1::{self, Pid1, Pid1Error};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // First, before any thread exists: every thread inherits this mask.
    if let Err(e) = pid1::signals::block() {
        return fail(&Error::from(e));
    }
    let cli = match Cli::try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

fn fail(error: &Error) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "kvm-manager: {}", render_chain(error));
    ExitCode::from(error.exit_code())
}

fn run(cli: Cli) -> Result<u8, Error> {
    let command = cli.command.unwrap_or(Command::Run {
        qemu_extra: cli.qemu_extra,
    });
    let log = config::parse_log(&cli.settings)?;
    let sink = match command {
        Command::Run { .. } | Command::Network | Command::Supervise { .. } => Sink::Stdout,
        Command::Image
        | Command::ConfigDrive { .. }
        | Command::QemuArgs { .. }
        | Command::Console
        | Command::Freeze
        | Command::Thaw
        | Command::Backup { .. }
        | Command::Restore { .. } => Sink::Stderr,
    };
    logging::init(&log, sink)?;
    pid1::raise_open_files_limit();

    let hostname = Hostname::from_system()?;
    let settings = &cli.settings;
    // `run` and `image` need a base image: they get its target as a value, not an `Option`.
    let config = |extra| Config::from_settings(settings, hostname.clone(), extra).map(warned);
    let with_image = |extra| {
        Config::with_image(settings, hostname.clone(), extra)
            .map(|(config, target)| (warned(config), target))
    };
    match command {
        Command::Run { qemu_extra } => {
            let (config, target) = with_image(qemu_extra)?;
            runtime()?.block_on(run::run(&config, &target))
        }
        Command::Image => {
            let (config, target) = with_image(Vec::new())?;
            image(&config, &target)
        }
        Command::Network => network(&config(Vec::new())?),
        Command::ConfigDrive { output } => config_drive(&config(Vec::new())?, &output),
        Command::QemuArgs { qemu_extra } => qemu_args(&config(qemu_extra)?),
        Command::Supervise { command } => supervise(&config(Vec::new())?, command),
        Command::Freeze => control(
            &config(Vec::new())?,
            crate::qemu::agent::control::Action::Freeze,
        ),
        Command::Thaw => control(
            &config(Vec::new())?,
            crate::qemu::agent::control::Action::Thaw,
        ),
        Command::Backup {
            to,
            full,
            incremental,
            rate_limit,
        } => backup::client(&config(Vec::new())?, to, full, incremental, rate_limit),
        Command::Restore { from, force } => backup::restore(&config(Vec::new())?, &from, force),
        Command::Console => {
            let config = config(Vec::new())?;
            crate::qemu::attach::attach(&crate::qemu::attach::socket_path(&config.runtime_dir))
                .map_err(crate::qemu::QemuError::from)?;
            Ok(0)
        }
    }
}

/// Logs the settings that were accepted but are questionable, once, before anything runs.
fn warned(config: Config) -> Config {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    config
}

/// `kvm-manager freeze|thaw`: asks the running `run` over its control socket; prints its
/// answer (JSON) on stdout.
fn control(config: &Config, action: crate::qemu::agent::control::Action) -> Result<u8, Error> {
    let socket = crate::qemu::agent::control::socket_path(&config.runtime_dir);
    let answer = crate::qemu::agent::control::request(&socket, action)
        .map_err(crate::qemu::QemuError::from)?;
    let _ = writeln!(std::io::stdout().lock(), "{answer}");
    Ok(0)
}

/// Builds the config drive at `output` and prints its path (nothing for `CONFIG_DRIVE=none`).
fn config_drive(config: &Config, output: &std::path::Path) -> Result<u8, Error> {
    let _owner = owner::acquire(&config.pet_dir, &config.hostname, "config-drive")?;
    let state = crate::state::load_or_create(&config.pet_dir, &config.hostname, config.net.vm_mac)?;
    let written =
        crate::configdrive::write(&config.config_drive, &config.hostname, &state, output)?;
    if written {
        let _ = writeln!(std::io::stdout().lock(), "{}", output.display());
    } else {
        tracing::info!("CONFIG_DRIVE=none: no config drive written");
    }
    Ok(0)
}

/// `kvm-manager image`: the base image and the pet overlay; prints both paths.
fn image(config: &Config, target: &ImageTarget) -> Result<u8, Error> {
    // First: beside a running VM (`kubectl exec`), this is refused before anything changes.
    let _owner = owner::acquire(&config.pet_dir, &config.hostname, "image")?;
    let runtime = runtime()?;
    let (base, overlay) = runtime.block_on(async {
        let pid1 = Pid1::start()?;
        // PET_DIR exists: the owner lock created it (or failed naming PET_DIR).
        let mut loaded =
            crate::state::load(&config.pet_dir, &config.hostname, config.net.vm_mac)?;
        // Dropping the download on SIGTERM/SIGINT keeps its partial file for the next start.
        let base = tokio::select! {
            base = image::ensure_base(&config.image, target) => base?,
            signal = pid1.shutdown_requested() => return Err(ImageError::Interrupted(signal).into()),
        };
        // The state is written with the firmware `run` will boot, decided as `run` does: a
        // state without it, beside a pet disk, means a VM that booted BIOS
        // (`launch::booted_before`).
        let existed = launch::booted_before(config, loaded.existed);
        let record = loaded.state.firmware.clone();
        let firmware = match launch::firmware(config, existed, record.as_ref())? {
            Some(plan) => plan,
            None => {
                let found = launch::detect_boot(&base);
                launch::firmware_detected(config, existed, record.as_ref(), &base.path, found, true)?
            }
        };
        loaded.record_firmware(firmware.record)?;
        loaded.persist()?;
        let overlay = image::ensure_overlay(&base, &config.overlay_path(), config.vm.disk_size)?;
        Ok::<_, Error>((base, overlay))
    })?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", base.path.display());
    let _ = writeln!(out, "{}", overlay.path.display());
    Ok(0)
}

/// Runs an arbitrary command under our PID-1 supervision (the test hook for `pid1`).
fn supervise(config: &Config, argv: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let pid1 = Pid1::start()?;
        let (program, args) = argv.split_first().ok_or(config::ConfigError::Missing {
            var: "COMMAND",
            fix: "give the program to supervise after `--`".to_owned(),
        })?;
        // A supervisor runs what it is given as it is given, environment included.
        let spawned =
            pid1.reaper()
                .spawn_with(program, args, [Stdio::Inherit; 3], reaper::Env::Inherit)?;
        tracing::info!(pid = spawned.pid.as_raw(), program = ?program, "started");
        let status = pid1.supervise(spawned, config.vm.shutdown_timeout).await?;
        tracing::info!(%status, "main child ended");
        Ok(status.code())
    })
}

/// `kvm-manager network`: reconcile bridge, tap and NAT, print the plan, then serve DHCP and
/// DNS (the same [`Services`] as `run`) until SIGTERM.
fn network(config: &Config) -> Result<u8, Error> {
    let _owner = owner::acquire(&config.pet_dir, &config.hostname, "network")?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let pid1 = Pid1::start()?;
        let vm_mac =
            crate::state::load_or_create(&config.pet_dir, &config.hostname, config.net.vm_mac)?
                .mac();
        let pod = net::discover().await?;
        let plan = net::plan(&config.net, &pod, vm_mac)?;
        let wake = net::apply(&plan, pid1.reaper()).await?;
        let mut services = Services::start(&Lan::load(config, &plan)?).await?;
        services.watch_spoofed(wake);
        // The plan is this subcommand's product: stdout, not a log line.
        let _ = write!(std::io::stdout().lock(), "{}", net::printout(&plan));
        tracing::info!(bridge = %plan.bridge, tap = %plan.tap, "network ready; serving DHCP and DNS until SIGTERM");
        let signal = pid1.shutdown_requested().await;
        tracing::info!(%signal, "shutting down");
        drop(services);
        Ok(0)
    })
}

/// `kvm-manager qemu-args`: the command line `run` would use, without changing anything.
fn qemu_args(config: &Config) -> Result<u8, Error> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let state = crate::state::peek(&config.pet_dir, &config.hostname, config.net.vm_mac)?;
        let queues = launch::nic_queues(config)?;
        let wiring =
            net::wire(&config.net, &config.runtime_dir, state.mac(), false, queues).await?;
        let ignition = crate::configdrive::ignition::prepare(
            config.guest_io.ignition,
            &config.config_drive.userdata,
            &config.runtime_dir,
            false,
        )?;
        let stored = crate::state::stored(&config.pet_dir, &config.hostname)?;
        let record = stored.as_ref().and_then(|s| s.firmware.as_ref());
        let existed = launch::booted_before(config, stored.is_some());
        let firmware = launch::firmware_preview(config, existed, record)?;
        let launch = launch::decide(
            config,
            Some(&wiring),
            None,
            ignition.as_ref(),
            &firmware,
            &state.instance_id,
        )?;
        let mut out = std::io::stdout().lock();
        for arg in crate::qemu::args::build(&launch) {
            let _ = writeln!(out, "{}", arg.to_string_lossy());
        }
        Ok(0)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Pid1(Pid1Error::Runtime(e)))
}

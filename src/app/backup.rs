//! The backups beside a running VM (the socket `kvm-manager backup` talks to), and the
//! `backup` and `restore` subcommands.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use crate::backup::job::Backups;
use crate::backup::manifest::Base;
use crate::backup::plan::Want;
use crate::backup::{restore as restoring, socket};
use crate::config::Config;
use crate::error::Error;
use crate::image::owner;
use crate::pid1::Pid1;
use crate::qemu::agent::freeze::Freezer;
use crate::qemu::args::Launch;
use crate::qemu::qmp::Qmp;

/// Makes backups of the running VM possible: returns the handle `POST /backup` and the
/// schedule use, and serves `RUNTIME_DIR/backup.sock`.
pub(super) fn start(
    config: &Config,
    launch: &Launch,
    qmp: Qmp,
    freezer: Arc<Freezer>,
) -> Arc<Backups> {
    let backups = Arc::new(Backups {
        qmp,
        freezer: Some(freezer),
        hostname: config.hostname.to_string(),
        pet_dir: config.pet_dir.clone(),
        base: launch.base.as_ref().map(|base| Base {
            path: base.path.to_string_lossy().into_owned(),
            format: base.format.driver().to_owned(),
        }),
        running: tokio::sync::Mutex::new(()),
        default_dir: config.backup.dir.clone(),
    });
    let path = socket::socket_path(&config.runtime_dir);
    if let Err(e) = socket::serve(&path, Arc::clone(&backups)) {
        tracing::warn!(error = %crate::logging::render_chain(&e), "`kvm-manager backup` is unavailable");
    }
    if let (Some(every), Some(dir)) = (config.backup.every, &config.backup.dir) {
        let schedule = crate::backup::schedule::Schedule {
            dir: dir.clone(),
            every,
            full_every: config.backup.full_every,
            keep: config.backup.keep,
        };
        // Ends with the runtime; a running backup is then abandoned like any QMP call.
        tokio::spawn(crate::backup::schedule::run(Arc::clone(&backups), schedule));
    }
    backups
}

/// `kvm-manager backup`: asks the running `run`; prints its answer (JSON) on stdout.
pub(super) fn client(
    config: &Config,
    to: Option<std::path::PathBuf>,
    full: bool,
    incremental: bool,
    rate_limit: Option<u64>,
) -> Result<u8, Error> {
    let want = match (full, incremental) {
        (true, _) => Want::Full,
        (false, true) => Want::Incremental,
        (false, false) => Want::Auto { full_every: None },
    };
    let to = to.or_else(|| config.backup.dir.clone()).ok_or_else(|| {
        crate::config::ConfigError::Missing {
            var: "BACKUP_DIR",
            fix: "pass --to DIR (the mounted backup volume) or set BACKUP_DIR".to_owned(),
        }
    })?;
    // The server runs elsewhere (PID 1): it gets an absolute path.
    let dir = std::path::absolute(&to).unwrap_or(to);
    let answer = socket::request(
        &socket::socket_path(&config.runtime_dir),
        &dir,
        want,
        rate_limit,
    )?;
    let _ = writeln!(std::io::stdout().lock(), "{answer}");
    Ok(0)
}

/// `kvm-manager restore`: under the pet lock (refused while a VM owns the pet).
pub(super) fn restore(config: &Config, from: &Path, force: bool) -> Result<u8, Error> {
    let _owner = owner::acquire(&config.pet_dir, &config.hostname, "restore")?;
    let runtime = super::runtime()?;
    let hostname = config.hostname.to_string();
    let pet = runtime.block_on(async {
        let pid1 = Pid1::start()?;
        let request = restoring::Request {
            manifest: from,
            pet_dir: &config.pet_dir,
            hostname: &hostname,
            force,
            qemu_img: "qemu-img",
        };
        Ok::<_, Error>(restoring::restore(&request, pid1.reaper()).await?)
    })?;
    let _ = writeln!(std::io::stdout().lock(), "{}", pet.display());
    Ok(0)
}

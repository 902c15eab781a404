//! The pause watcher: a VM paused on a full pet volume is reported, and resumed once space is
//! back (the decisions are [`super::super::pause`]'s).

use std::path::{Path, PathBuf};

use tokio::sync::{broadcast, watch};
use tokio::time::{timeout, Instant};

use super::super::pause::{self, Change, Decision, Event, Pause, Pauses};
use super::super::qmp::Qmp;

/// Watches qemu's pauses for as long as its QMP connection lasts, in a task: reports each
/// pause and resume (log, and the returned channel, which the probes and metrics follow) and,
/// while the VM is paused for lack of space, looks at `pet_dir`'s free space every
/// [`pause::POLL_EVERY`] and sends `cont` when [`Pauses`] decides so.
pub(crate) fn watch_pauses(qmp: Qmp, pet_dir: PathBuf) -> watch::Receiver<Option<Pause>> {
    let (tx, rx) = watch::channel(None);
    let mut events = qmp.events();
    tokio::spawn(async move {
        let mut pauses = Pauses::default();
        // Events sent before we subscribed are lost: ask qemu where it stands.
        let mut resync = true;
        let mut next_look = Instant::now();
        let mut space = FreeSpace {
            dir: pet_dir.clone(),
            in_flight: None,
        };
        loop {
            if std::mem::take(&mut resync) {
                if let Some(event) = current_status(&qmp).await {
                    report(pauses.on_event(event, std::time::Instant::now()), &pet_dir);
                    tx.send_replace(pauses.current().cloned());
                }
            }
            let event = tokio::select! {
                event = events.recv() => event,
                () = tokio::time::sleep_until(next_look), if pauses.watching_space() => {
                    look_at_space(&qmp, &mut pauses, &mut space).await;
                    next_look = Instant::now() + pause::POLL_EVERY;
                    continue;
                }
            };
            match event {
                Ok(event) => {
                    let event = Event::from_qmp(&event.name, &event.data);
                    let was_watching = pauses.watching_space();
                    report(pauses.on_event(event, std::time::Instant::now()), &pet_dir);
                    tx.send_replace(pauses.current().cloned());
                    if !was_watching {
                        // A fresh pause: the space may already be back (someone was quick).
                        next_look = Instant::now();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "missed QMP events; asking qemu for its status");
                    resync = true;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    rx
}

/// qemu's run state as an [`Event`], or `None` when it does not answer (logged).
async fn current_status(qmp: &Qmp) -> Option<Event> {
    let status = match qmp.status().await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(error = %e, "could not ask qemu whether the VM is paused");
            return None;
        }
    };
    let nospace_device = if status == "io-error" {
        qmp.drives_out_of_space()
            .await
            .ok()
            .and_then(|drives| drives.into_iter().next())
    } else {
        None
    };
    Some(Event::Status {
        running: status == "running",
        status,
        nospace_device,
    })
}

async fn look_at_space(qmp: &Qmp, pauses: &mut Pauses, space: &mut FreeSpace) {
    let free = space.read().await;
    let Decision::Resume { attempt } = pauses.on_free_space(free, std::time::Instant::now()) else {
        return;
    };
    let free_mib = free.unwrap_or_default() >> 20;
    tracing::info!(pet_dir = %space.dir.display(), free_mib, attempt, "space is back on PET_DIR: resuming the VM (QMP cont)");
    if let Err(e) = qmp.cont().await {
        tracing::warn!(error = %e, "QMP cont failed; trying again later");
    }
}

/// Free space on the pet volume, read on a worker thread with a deadline: `statvfs` on a
/// stuck network volume must not stall the runtime, nor pile up a blocked thread per poll.
struct FreeSpace {
    dir: PathBuf,
    in_flight: Option<tokio::task::JoinHandle<nix::Result<nix::sys::statvfs::Statvfs>>>,
}

impl FreeSpace {
    /// Bytes free for us, or `None` when unknown (the previous read is still stuck, or failed).
    async fn read(&mut self) -> Option<u64> {
        let mut stat = match self.in_flight.take() {
            Some(stuck) if !stuck.is_finished() => {
                self.in_flight = Some(stuck);
                return None;
            }
            _ => {
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&dir))
            }
        };
        match timeout(pause::POLL_EVERY, &mut stat).await {
            Ok(Ok(Ok(stat))) => Some(stat.blocks_available().saturating_mul(stat.fragment_size())),
            Ok(_) => None,
            Err(_) => {
                self.in_flight = Some(stat);
                None
            }
        }
    }
}

fn report(change: Option<Change>, pet_dir: &Path) {
    match change {
        None => {}
        Some(Change::Paused(pause @ Pause::NoSpace { .. })) => {
            tracing::warn!(reason = pause.label(), pet_dir = %pet_dir.display(), "{pause} (qemu stopped on ENOSPC and holds the write to retry it on resume)");
        }
        Some(Change::Paused(pause @ Pause::IoError { .. })) => {
            tracing::error!(reason = pause.label(), "{pause}");
        }
        Some(Change::Paused(pause @ Pause::Stopped { .. })) => {
            tracing::warn!(reason = pause.label(), "{pause}");
        }
        Some(Change::Resumed) => tracing::info!("the VM runs again"),
        Some(Change::DiskError {
            device,
            operation,
            reason,
        }) => {
            tracing::error!(%device, %operation, %reason, "an I/O error on the VM's disk was passed on to the guest");
        }
    }
}

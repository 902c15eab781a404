//! A helper daemon that runs beside qemu (passt, swtpm, virtiofsd): spawned through the
//! reaper, its output relayed line by line into our log, and its last lines kept for the error
//! that reports its death (a daemon's own words are usually the only explanation).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::oneshot;
use tokio::time::sleep;

use super::reaper::Stdio;
use super::{ExitStatus, Pid1Error, Reaper};
use crate::locked::Locked as _;

/// How many of its last lines a daemon's death reports.
const LAST_WORDS: usize = 20;

/// How long to let the relays catch a daemon's last lines once it exited.
const LAST_WORDS_WAIT: Duration = Duration::from_millis(200);

/// A running daemon.
#[derive(Debug)]
pub(crate) struct Daemon {
    pid: Pid,
    exit: oneshot::Receiver<ExitStatus>,
    last_words: Arc<Mutex<VecDeque<String>>>,
    /// Its exit status was collected: nothing is left to stop.
    exited: bool,
}

impl Daemon {
    /// Starts `program ARGS` with stdin closed. Each non-empty line it writes goes to `log`,
    /// which logs it and says whether it is worth keeping among the last words.
    pub(crate) fn spawn(
        reaper: &Reaper,
        program: &OsStr,
        args: &[impl AsRef<OsStr>],
        log: impl Fn(&str) -> bool + Clone + Send + 'static,
    ) -> Result<Self, Pid1Error> {
        let spawned = reaper.spawn(program, args, [Stdio::Null, Stdio::Piped, Stdio::Piped])?;
        let last_words = Arc::new(Mutex::new(VecDeque::new()));
        for pipe in [spawned.pipes.stdout, spawned.pipes.stderr]
            .into_iter()
            .flatten()
        {
            let (words, log) = (Arc::clone(&last_words), log.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = line.trim_end();
                    if !line.is_empty() && log(line) {
                        keep(&words, line);
                    }
                }
            });
        }
        Ok(Self {
            pid: spawned.pid,
            exit: spawned.exit,
            last_words,
            exited: false,
        })
    }

    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Its exit status if it has exited already (while starting: it gave up), once its last
    /// lines are in.
    pub(crate) async fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.exit.try_recv().ok()?;
        self.exited = true;
        sleep(LAST_WORDS_WAIT).await;
        Some(status)
    }

    /// Its last lines, oldest first.
    pub(crate) fn last_words(&self) -> String {
        let words = self.last_words.locked();
        words.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Resolves when it exits, `grace` later (for its last lines, or for a death it caused to
    /// be reported first), with its status; `None` when the reaper is gone and the status with
    /// it.
    pub(crate) async fn died(&mut self, grace: Duration) -> Option<ExitStatus> {
        let status = (&mut self.exit).await.ok();
        self.exited = true;
        sleep(grace.max(LAST_WORDS_WAIT)).await;
        status
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the reaper collected it.
    pub(crate) async fn stop(mut self, grace: Duration) {
        if self.exited || self.exit.try_recv().is_ok() {
            return;
        }
        let _ = kill(self.pid, Signal::SIGTERM);
        let _ = super::supervisor::stop_within(self.pid, grace, &mut self.exit).await;
    }
}

fn keep(words: &Mutex<VecDeque<String>>, line: &str) {
    let mut words = words.locked();
    if words.len() == LAST_WORDS {
        words.pop_front();
    }
    words.push_back(line.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_lines_are_kept_oldest_first() {
        let words = Mutex::new(VecDeque::new());
        for n in 0..LAST_WORDS + 5 {
            keep(&words, &format!("line {n}"));
        }
        let words = words.locked();
        assert_eq!(words.len(), LAST_WORDS);
        assert_eq!(words.front().map(String::as_str), Some("line 5"));
        assert_eq!(
            words.back().map(String::as_str),
            Some(format!("line {}", LAST_WORDS + 4).as_str())
        );
    }
}

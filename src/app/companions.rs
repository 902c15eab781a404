//! The programs qemu needs besides its network, started before it (qemu connects to their
//! sockets once, at start) and supervised with it: swtpm (`TPM=2.0`) and one virtiofsd per
//! virtio-fs share. Either dying stops the VM ([`super::network::Attached::supervise`]).

use super::phase::timed;
use crate::config::Config;
use crate::error::Error;
use crate::pid1::Pid1;
use crate::qemu::args::Launch;
use crate::qemu::tpm::{self, Swtpm};
use crate::qemu::virtiofsd::{self, Virtiofsds};

pub(super) struct Companions {
    pub tpm: Option<Swtpm>,
    pub shares: Virtiofsds,
}

impl Companions {
    /// Starts what `launch` needs; a failure stops what had started.
    pub(super) async fn start(
        config: &Config,
        launch: &Launch,
        pid1: &Pid1,
    ) -> Result<Self, Error> {
        let tpm = match &launch.tpm {
            Some(plan) => Some(timed("swtpm", tpm::start(plan, pid1.reaper())).await?),
            None => None,
        };
        match virtiofsd::start(&launch.shares, &config.guest_io, pid1.reaper()).await {
            Ok(shares) => Ok(Self { tpm, shares }),
            Err(e) => {
                if let Some(tpm) = tpm {
                    tpm.stop().await;
                }
                Err(e.into())
            }
        }
    }

    /// Whether there is anything to watch besides qemu.
    pub(super) fn is_empty(&self) -> bool {
        self.tpm.is_none() && self.shares.is_empty()
    }

    /// Resolves when one of them dies, with the error that reports it (never when none runs).
    pub(super) async fn died(&mut self) -> Error {
        let tpm_died = async {
            match &mut self.tpm {
                Some(tpm) => Error::from(tpm.died().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            e = tpm_died => e,
            e = self.shares.died() => Error::from(e),
        }
    }

    pub(super) async fn stop(self) {
        self.shares.stop().await;
        if let Some(tpm) = self.tpm {
            tpm.stop().await;
        }
    }
}

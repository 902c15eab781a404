//! What the guest sees besides its disk and NIC: `SHARES`, `SHARE_TRANSPORT`, `VIRTIOFSD`,
//! `IGNITION`, `NIC_QUEUES`.

use std::path::PathBuf;

use super::{choice, invalid, non_empty, ConfigError};
use crate::cli::GuestIoSettings;
use crate::qemu::shares::{self, Share};

/// `IGNITION`: whether an Ignition user-data also goes to the guest by fw_cfg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IgnitionMode {
    Auto,
    Off,
}

/// Shares, Ignition and the NIC's queues, validated.
#[derive(Debug, Clone)]
pub(crate) struct GuestIoConfig {
    pub shares: Vec<Share>,
    /// For the shares that do not name their transport.
    pub share_transport: ShareTransport,
    pub virtiofsd: PathBuf,
    pub ignition: IgnitionMode,
    pub nic_queues: NicQueues,
}

/// `SHARE_TRANSPORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShareTransport {
    /// virtio-fs when `VIRTIOFSD` is found, else 9p.
    Auto,
    Only(shares::Transport),
}

/// `NIC_QUEUES`: queue pairs of the NIC in NAT mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NicQueues {
    /// One per vCPU, at most [`NicQueues::AUTO_MAX`].
    Auto,
    Fixed(u32),
}

impl NicQueues {
    /// Beyond 8 queues a guest gains little (its interrupts spread over 8 CPUs already) while
    /// each queue costs it MSI-X vectors and the host a vhost thread.
    pub(crate) const AUTO_MAX: u32 = 8;
    /// The most `NIC_QUEUES` accepts (the kernel allows 256 per tap; qemu's vectors run out
    /// long before that matters).
    const MAX: u32 = 64;

    /// The queue pairs for a VM of `cpus` vCPUs; 1 means no multiqueue.
    pub(crate) fn resolve(self, cpus: u32) -> u32 {
        match self {
            Self::Auto => cpus.clamp(1, Self::AUTO_MAX),
            Self::Fixed(n) => n,
        }
    }
}

pub(super) fn parse_guest_io(settings: &GuestIoSettings) -> Result<GuestIoConfig, ConfigError> {
    let ignition = choice(
        "IGNITION",
        &settings.ignition,
        &[("auto", IgnitionMode::Auto), ("off", IgnitionMode::Off)],
    )?;
    let nic_queues = parse_nic_queues(&settings.nic_queues)?;
    let shares = non_empty(&settings.shares)
        .map(|raw| {
            shares::parse(raw, shares::subdirectories).map_err(|e| {
                invalid(
                    "SHARES",
                    raw,
                    format!("entry {:?}: {}", e.entry, e.reason),
                    "write TAG=/PATH[:ro|:rw][:virtiofs|:9p] or a directory of mount points \
                     /DIR[:ro|:rw], comma separated, e.g. config=/etc/app:ro,data=/data:rw",
                )
            })
        })
        .transpose()?
        .unwrap_or_default();
    let share_transport = choice(
        "SHARE_TRANSPORT",
        &settings.share_transport,
        &[
            ("auto", ShareTransport::Auto),
            (
                "virtiofs",
                ShareTransport::Only(shares::Transport::VirtioFs),
            ),
            ("9p", ShareTransport::Only(shares::Transport::NineP)),
        ],
    )?;
    Ok(GuestIoConfig {
        shares,
        share_transport,
        virtiofsd: settings.virtiofsd.clone(),
        ignition,
        nic_queues,
    })
}

fn parse_nic_queues(raw: &str) -> Result<NicQueues, ConfigError> {
    let value = raw.trim();
    if value.eq_ignore_ascii_case("auto") {
        return Ok(NicQueues::Auto);
    }
    match value.parse::<u32>() {
        Ok(n @ 1..=NicQueues::MAX) => Ok(NicQueues::Fixed(n)),
        _ => Err(invalid(
            "NIC_QUEUES",
            raw,
            format!("neither `auto` nor a number from 1 to {}", NicQueues::MAX),
            "use NIC_QUEUES=auto (one queue per vCPU, at most 8) or e.g. NIC_QUEUES=4; 1 turns \
             multiqueue off",
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parsed(args: &[&str]) -> Result<GuestIoConfig, ConfigError> {
        let mut argv = vec!["kvm-manager"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("valid arguments");
        parse_guest_io(&cli.settings.guest_io)
    }

    #[test]
    fn shares_and_share_transport_errors_name_the_variable_the_entry_and_the_fix() {
        let err = parsed(&["--shares", "data=/d,oops=relative"])
            .expect_err("relative")
            .to_string();
        assert!(
            err.contains("SHARES (--shares)")
                && err.contains("\"oops=relative\"")
                && err.contains("absolute")
                && err.contains("Fix: write TAG=/PATH"),
            "{err}"
        );
        let err = parsed(&["--share-transport", "nfs"])
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("SHARE_TRANSPORT") && err.contains("auto, virtiofs, 9p"),
            "{err}"
        );
        let ok = parsed(&["--shares", " ", "--ignition", "OFF"]).expect("empty SHARES is none");
        assert!(ok.shares.is_empty());
        assert_eq!(ok.ignition, IgnitionMode::Off);
        assert_eq!(ok.share_transport, ShareTransport::Auto);
    }

    #[test]
    fn auto_queues_follow_the_vcpus_up_to_eight_and_one_vcpu_has_no_multiqueue() {
        assert_eq!(NicQueues::Auto.resolve(1), 1);
        assert_eq!(NicQueues::Auto.resolve(4), 4);
        assert_eq!(NicQueues::Auto.resolve(32), 8);
        assert_eq!(NicQueues::Fixed(2).resolve(16), 2);
    }

    #[test]
    fn nic_queues_accepts_auto_or_1_to_64_and_names_the_variable_otherwise() {
        assert_eq!(parse_nic_queues("auto").expect("auto"), NicQueues::Auto);
        assert_eq!(parse_nic_queues(" 4 ").expect("4"), NicQueues::Fixed(4));
        for bad in ["0", "65", "many", "-1"] {
            let err = parse_nic_queues(bad).expect_err(bad).to_string();
            assert!(err.contains("NIC_QUEUES (--nic-queues)"), "{err}");
        }
    }
}

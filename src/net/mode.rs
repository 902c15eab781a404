//! Which way the VM reaches the pod network (`NETWORK_MODE`): NAT (bridge, tap, nftables and
//! our DHCP/DNS; needs CAP_NET_ADMIN and a usable /dev/net/tun) or passt (the VM on the pod's
//! own address through a passt child; needs neither). [`probe`] reads the facts once;
//! [`decide`] picks, purely, and says why in words for the one log line.

use std::path::{Path, PathBuf};

use super::{host, tap, NetError};
use crate::config::NetworkMode;

/// The mode a run uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Nat,
    /// With the passt binary found on PATH.
    Passt {
        binary: PathBuf,
    },
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Nat => "nat",
            Mode::Passt { .. } => "passt",
        })
    }
}

/// What the container offers, read by [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    /// CAP_NET_ADMIN is in our effective set.
    pub net_admin: bool,
    /// /dev/net/tun exists and opens for reading and writing.
    pub tun: bool,
    /// The passt binary, when it is on PATH.
    pub passt: Option<PathBuf>,
}

/// The decided mode and why, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub mode: Mode,
    pub reason: &'static str,
}

/// `requested` + `facts` → the mode, or the error naming what is missing and the fix.
pub(crate) fn decide(requested: NetworkMode, facts: &Facts) -> Result<Choice, NetError> {
    let nat = |reason| Choice {
        mode: Mode::Nat,
        reason,
    };
    let passt = |reason, binary: &Path| Choice {
        mode: Mode::Passt {
            binary: binary.to_owned(),
        },
        reason,
    };
    match requested {
        NetworkMode::Nat if !facts.net_admin => Err(NetError::NatNeedsNetAdmin),
        NetworkMode::Nat if !facts.tun => Err(NetError::NatNeedsTun),
        NetworkMode::Nat => Ok(nat("NETWORK_MODE=nat")),
        NetworkMode::Passt => match &facts.passt {
            Some(binary) => Ok(passt("NETWORK_MODE=passt", binary)),
            None => Err(NetError::PasstMissing),
        },
        NetworkMode::Auto if facts.net_admin && facts.tun => Ok(nat(
            "NETWORK_MODE=auto and the container has CAP_NET_ADMIN and /dev/net/tun",
        )),
        NetworkMode::Auto => {
            let reason = match (facts.net_admin, facts.tun) {
                (false, false) => {
                    "NETWORK_MODE=auto and the container has neither CAP_NET_ADMIN nor /dev/net/tun"
                }
                (false, true) => "NETWORK_MODE=auto and the container lacks CAP_NET_ADMIN",
                (true, _) => "NETWORK_MODE=auto and the container has no usable /dev/net/tun",
            };
            match &facts.passt {
                Some(binary) => Ok(passt(reason, binary)),
                None => Err(NetError::NoMode { reason }),
            }
        }
    }
}

/// Reads our capabilities, tries /dev/net/tun and looks for `passt` on PATH.
pub(crate) fn probe() -> Facts {
    let net_admin = host::require_net_admin().is_ok();
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tap::TUN_DEVICE)
        .is_ok();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let passt = std::env::split_paths(&path)
        .map(|dir| dir.join("passt"))
        .find(|candidate| candidate.is_file());
    Facts {
        net_admin,
        tun,
        passt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(net_admin: bool, tun: bool, passt: bool) -> Facts {
        Facts {
            net_admin,
            tun,
            passt: passt.then(|| PathBuf::from("/usr/bin/passt")),
        }
    }

    #[test]
    fn auto_picks_nat_with_net_admin_and_tun_and_passt_otherwise() {
        let chosen = decide(NetworkMode::Auto, &facts(true, true, true)).expect("a mode");
        assert_eq!(chosen.mode, Mode::Nat);
        assert!(chosen.reason.contains("CAP_NET_ADMIN and /dev/net/tun"));
        for (net_admin, tun, why) in [
            (false, true, "lacks CAP_NET_ADMIN"),
            (true, false, "no usable /dev/net/tun"),
            (false, false, "neither CAP_NET_ADMIN nor /dev/net/tun"),
        ] {
            let chosen = decide(NetworkMode::Auto, &facts(net_admin, tun, true)).expect("passt");
            let binary = PathBuf::from("/usr/bin/passt");
            assert_eq!(chosen.mode, Mode::Passt { binary }, "{why}");
            assert!(chosen.reason.contains(why), "{}", chosen.reason);
        }
    }

    #[test]
    fn auto_without_nat_or_passt_names_both_fixes() {
        let err = decide(NetworkMode::Auto, &facts(false, true, false)).expect_err("no mode");
        let message = err.to_string();
        assert!(message.contains("lacks CAP_NET_ADMIN"), "{message}");
        assert!(message.contains("install the passt package"), "{message}");
        // Auto needs passt only where NAT cannot work.
        let chosen = decide(NetworkMode::Auto, &facts(true, true, false)).expect("nat");
        assert_eq!(chosen.mode, Mode::Nat);
    }

    #[test]
    fn forced_nat_names_the_missing_capability_or_device() {
        let err = decide(NetworkMode::Nat, &facts(false, true, true)).expect_err("no NET_ADMIN");
        assert!(matches!(err, NetError::NatNeedsNetAdmin), "{err}");
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
        assert!(err.to_string().contains("NETWORK_MODE=passt"), "{err}");
        let err = decide(NetworkMode::Nat, &facts(true, false, true)).expect_err("no tun");
        assert!(matches!(err, NetError::NatNeedsTun), "{err}");
        assert!(err.to_string().contains("/dev/net/tun"), "{err}");
        let chosen = decide(NetworkMode::Nat, &facts(true, true, false)).expect("nat");
        assert_eq!(chosen.mode, Mode::Nat);
    }

    #[test]
    fn forced_passt_needs_only_the_binary() {
        let chosen = decide(NetworkMode::Passt, &facts(true, true, true)).expect("passt");
        assert!(
            matches!(chosen.mode, Mode::Passt { .. }),
            "{:?}",
            chosen.mode
        );
        let err = decide(NetworkMode::Passt, &facts(true, true, false)).expect_err("no binary");
        assert!(matches!(err, NetError::PasstMissing), "{err}");
        assert!(err.to_string().contains("passt"), "{err}");
    }
}

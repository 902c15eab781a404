//! The pod's `/etc/resolv.conf`, parsed: the upstreams of our forwarder, the search list and
//! domain name that DHCP hands out, and the options that shape forwarding.
//!
//! Parsing follows resolv.conf(5) as glibc reads it: `#` and `;` start comments, unknown
//! keywords are ignored, `domain` and `search` override each other (the last one wins), and
//! at most the first three `nameserver` lines are used by glibc — we keep all of them,
//! because relaying to every cluster nameserver only adds failover.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// glibc's defaults (resolv.conf(5)).
const DEFAULT_NDOTS: u8 = 1;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ATTEMPTS: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    #[error("{path} is unusable; the pod's DNS configuration is needed for DHCP and DNS")]
    Open {
        path: PathBuf,
        #[source]
        source: crate::regular_file::RegularFileError,
    },
    #[error("could not read {path}; the pod's DNS configuration is needed for DHCP and DNS")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    /// In order; the first one is also the DHCP domain name (option 15).
    pub search: Vec<String>,
    pub ndots: u8,
    /// Per-try timeout (`options timeout:N`).
    pub timeout: Duration,
    pub attempts: u8,
}

impl Default for ResolvConf {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: DEFAULT_NDOTS,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

impl ResolvConf {
    /// A FIFO or device in place of the file is an error, never a hang.
    pub fn load(path: &Path) -> Result<Self, ResolvConfError> {
        let file = crate::regular_file::open(path).map_err(|source| ResolvConfError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file.into_file(), &mut text).map_err(|source| {
            ResolvConfError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(Self::parse(&text))
    }

    /// Never fails: a line we cannot use is skipped, like glibc does.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = match line.find(['#', ';']) {
                Some(at) => &line[..at],
                None => line,
            };
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scoped IPv6 address (`fe80::1%eth0`) carries a zone we cannot use.
                    if let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) {
                        if !conf.nameservers.contains(&ip) {
                            conf.nameservers.push(ip);
                        }
                    }
                }
                Some("search") => conf.search = words.map(normalize).collect(),
                Some("domain") => conf.search = words.next().map(normalize).into_iter().collect(),
                Some("options") => words.for_each(|option| conf.apply_option(option)),
                _ => {}
            }
        }
        conf.search.retain(|domain| !domain.is_empty());
        conf.search.dedup();
        conf
    }

    fn apply_option(&mut self, option: &str) {
        let Some((key, value)) = option.split_once(':') else {
            return;
        };
        let Ok(value) = value.parse::<u32>() else {
            return;
        };
        // Clamped to glibc's limits.
        match key {
            "ndots" => self.ndots = value.min(15) as u8,
            "timeout" => self.timeout = Duration::from_secs(u64::from(value.clamp(1, 30))),
            "attempts" => self.attempts = value.clamp(1, 5) as u8,
            _ => {}
        }
    }

    /// The IPv4 nameservers (what DHCP option 6 can carry in `passthrough` mode).
    pub fn ipv4_nameservers(&self) -> Vec<std::net::Ipv4Addr> {
        self.nameservers
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect()
    }
}

/// Lowercase, without the trailing dot.
fn normalize(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_kubernetes_resolv_conf() {
        let conf = ResolvConf::parse(
            "search ns1.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\n\
             options ndots:5\n",
        );
        assert_eq!(
            conf.nameservers,
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            conf.search,
            [
                "ns1.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(conf.ndots, 5);
        assert_eq!(conf.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn keeps_every_nameserver_once_and_skips_junk() {
        let conf = ResolvConf::parse(
            "# comment\nnameserver 127.0.0.53 # local stub\nnameserver bogus\n\
             nameserver fe80::1%eth0\nnameserver 10.0.0.1\nnameserver 10.0.0.1\n\
             nameserver ::1\nfrobnicate yes\n",
        );
        assert_eq!(
            conf.nameservers,
            ["127.0.0.53", "10.0.0.1", "::1"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        assert_eq!(conf.ipv4_nameservers().len(), 2);
    }

    #[test]
    fn last_of_domain_and_search_wins() {
        let conf = ResolvConf::parse("search a.example b.example\ndomain Corp.Example.\n");
        assert_eq!(conf.search, ["corp.example"]);
        let conf = ResolvConf::parse("domain corp.example\nsearch a.example. b.example\n");
        assert_eq!(conf.search, ["a.example", "b.example"]);
    }

    #[test]
    fn options_are_clamped_and_bad_ones_ignored() {
        let conf = ResolvConf::parse("options ndots:99 timeout:0 attempts:x rotate\n");
        assert_eq!(conf.ndots, 15);
        assert_eq!(conf.timeout, Duration::from_secs(1));
        assert_eq!(conf.attempts, DEFAULT_ATTEMPTS);
    }

    #[test]
    fn load_reads_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 10.96.0.10\n").unwrap();
        let conf = ResolvConf::load(&path).unwrap();
        assert_eq!(conf.nameservers, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_fifo_in_place_of_resolv_conf_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR).unwrap();
        let err = ResolvConf::load(&path).unwrap_err();
        assert!(matches!(err, ResolvConfError::Open { .. }), "{err:?}");
        let chain = crate::logging::render_chain(&err);
        assert!(chain.contains("FIFO"), "{chain}");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in "\\PC*") {
            let _ = ResolvConf::parse(&text);
        }
    }
}

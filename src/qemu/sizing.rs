//! VM size from the container's cgroup limits, so that pod `resources.limits` size the VM.
//!
//! cgroup v2: `cpu.max` (`$QUOTA $PERIOD` or `max $PERIOD`) and `memory.max` (bytes or
//! `max`). cgroup v1: `cpu/cpu.cfs_quota_us` (-1 = none) with `cpu.cfs_period_us`, and
//! `memory/memory.limit_in_bytes` (a huge number = none). Each file is looked up in our own
//! cgroup (from `/proc/self/cgroup`) below the mount, then at the mount itself, which is where
//! container runtimes put the container's own cgroup.

use std::path::{Path, PathBuf};

use crate::size::{ByteSize, GIB, MIB};

/// Limits found; `None` means unlimited or unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Limits {
    /// CPU quota in thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    pub memory: Option<u64>,
}

/// What the VM gets, and why (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizing {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// Without a limit: one CPU and 1 GiB, as the contract says.
pub(crate) const DEFAULT_MEMORY: u64 = GIB;
/// Memory kept for qemu itself (device emulation, caches, our own process): an eighth of the
/// limit, at least 192 MiB and at most 2 GiB.
pub(crate) fn qemu_overhead(limit: u64) -> u64 {
    (limit / 8).clamp(192 * MIB, 2 * GIB)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SizingError {
    #[error(
        "the container's memory limit ({limit}) leaves less than 64MiB for the guest after \
         qemu's own {overhead}; raise resources.limits.memory or set VM_MEMORY"
    )]
    MemoryLimitTooSmall { limit: ByteSize, overhead: ByteSize },
}

/// Decides the VM size: explicit settings win, then limits, then the defaults.
pub(crate) fn decide(
    cpus: Option<u32>,
    memory: Option<ByteSize>,
    limits: Limits,
) -> Result<Sizing, SizingError> {
    let cpus = cpus.unwrap_or_else(|| {
        limits
            .cpu_millis
            .map(|m| {
                u32::try_from(m.div_ceil(1000))
                    .unwrap_or(u32::MAX)
                    .clamp(1, 1024)
            })
            .unwrap_or(1)
    });
    let memory = match (memory, limits.memory) {
        (Some(memory), _) => memory.bytes(),
        (None, Some(limit)) => {
            let overhead = qemu_overhead(limit);
            let left = limit.saturating_sub(overhead);
            if left < 64 * MIB {
                return Err(SizingError::MemoryLimitTooSmall {
                    limit: ByteSize(limit),
                    overhead: ByteSize(overhead),
                });
            }
            left
        }
        (None, None) => DEFAULT_MEMORY,
    };
    Ok(Sizing {
        cpus,
        memory_mib: memory / MIB,
    })
}

/// Reads the limits below `root` (normally `/sys/fs/cgroup`) for the process whose
/// `/proc/<pid>/cgroup` text is `self_cgroup`.
pub(crate) fn read_limits(root: &Path, self_cgroup: &str) -> Limits {
    let v2_path = self_cgroup.lines().find_map(|l| l.strip_prefix("0::"));
    let v1_path = |controller: &str| {
        self_cgroup.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then_some(path)
        })
    };
    if root.join("cgroup.controllers").exists()
        || v2_path.is_some_and(|p| root.join(rel(p)).join("cgroup.controllers").exists())
    {
        let dirs = candidates(root, v2_path);
        return Limits {
            cpu_millis: first(&dirs, "cpu.max", parse_v2_cpu),
            memory: first(&dirs, "memory.max", parse_limit),
        };
    }
    let cpu_dirs = candidates(&root.join("cpu"), v1_path("cpu"));
    let memory_dirs = candidates(&root.join("memory"), v1_path("memory"));
    Limits {
        cpu_millis: cpu_dirs.iter().find_map(|dir| {
            let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
            let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
            parse_v1_cpu(&quota, &period)
        }),
        memory: first(&memory_dirs, "memory.limit_in_bytes", parse_limit),
    }
}

/// Reads this process's limits from the real cgroup filesystem.
pub(crate) fn read_own_limits() -> Limits {
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    read_limits(Path::new("/sys/fs/cgroup"), &self_cgroup)
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

fn candidates(mount: &Path, own: Option<&str>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(own) = own.filter(|p| !rel(p).is_empty()) {
        dirs.push(mount.join(rel(own)));
    }
    dirs.push(mount.to_path_buf());
    dirs
}

fn first(dirs: &[PathBuf], file: &str, parse: fn(&str) -> Option<u64>) -> Option<u64> {
    dirs.iter()
        .find_map(|dir| std::fs::read_to_string(dir.join(file)).ok())
        .and_then(|text| parse(&text))
}

fn parse_v2_cpu(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let quota: u64 = parts.next()?.parse().ok()?;
    let period: u64 = parts.next()?.parse().ok()?;
    (period > 0).then(|| quota * 1000 / period)
}

fn parse_v1_cpu(quota: &str, period: &str) -> Option<u64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota.unsigned_abs() * 1000 / period)
}

/// Bytes, or `None` for `max` and for v1's "no limit" (a value near `i64::MAX`).
fn parse_limit(text: &str) -> Option<u64> {
    let value: u64 = text.trim().parse().ok()?;
    (value < (1 << 60)).then_some(value)
}

#[cfg(test)]
mod tests;

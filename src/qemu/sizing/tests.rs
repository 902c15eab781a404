use std::fs;

use super::*;

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }
    dir
}

#[test]
fn cgroup_v2_limits_at_the_mount() {
    let root = tree(&[
        ("cgroup.controllers", "cpu memory"),
        ("cpu.max", "250000 100000\n"),
        ("memory.max", "4294967296\n"),
    ]);
    let limits = read_limits(root.path(), "0::/\n");
    assert_eq!(
        limits,
        Limits {
            cpu_millis: Some(2500),
            memory: Some(4 * GIB)
        }
    );
}

#[test]
fn cgroup_v2_own_cgroup_wins_over_the_mount() {
    let root = tree(&[
        ("cgroup.controllers", "cpu memory"),
        ("cpu.max", "max 100000\n"),
        ("memory.max", "max\n"),
        ("kubepods/pod1/c1/cgroup.controllers", "cpu memory"),
        ("kubepods/pod1/c1/cpu.max", "50000 100000\n"),
        ("kubepods/pod1/c1/memory.max", "1073741824\n"),
    ]);
    let limits = read_limits(root.path(), "0::/kubepods/pod1/c1\n");
    assert_eq!(
        limits,
        Limits {
            cpu_millis: Some(500),
            memory: Some(GIB)
        }
    );
}

#[test]
fn cgroup_v2_without_limits() {
    let root = tree(&[
        ("cgroup.controllers", "cpu memory"),
        ("cpu.max", "max 100000\n"),
        ("memory.max", "max\n"),
    ]);
    assert_eq!(read_limits(root.path(), "0::/\n"), Limits::default());
}

#[test]
fn cgroup_v1_limits() {
    let root = tree(&[
        ("cpu/cpu.cfs_quota_us", "200000\n"),
        ("cpu/cpu.cfs_period_us", "100000\n"),
        ("memory/memory.limit_in_bytes", "2147483648\n"),
    ]);
    let limits = read_limits(
        root.path(),
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
    );
    assert_eq!(
        limits,
        Limits {
            cpu_millis: Some(2000),
            memory: Some(2 * GIB)
        }
    );
}

#[test]
fn cgroup_v1_unlimited() {
    let root = tree(&[
        ("cpu/cpu.cfs_quota_us", "-1\n"),
        ("cpu/cpu.cfs_period_us", "100000\n"),
        ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
    ]);
    assert_eq!(
        read_limits(root.path(), "3:cpu,cpuacct:/\n4:memory:/\n"),
        Limits::default()
    );
}

#[test]
fn sizing_prefers_settings_then_limits_then_defaults() {
    let limits = Limits {
        cpu_millis: Some(1500),
        memory: Some(4 * GIB),
    };
    assert_eq!(
        decide(None, None, limits),
        Ok(Sizing {
            cpus: 2,
            memory_mib: 4 * 1024 - 512
        })
    );
    assert_eq!(
        decide(Some(3), Some(ByteSize(GIB)), limits),
        Ok(Sizing {
            cpus: 3,
            memory_mib: 1024
        })
    );
    assert_eq!(
        decide(None, None, Limits::default()),
        Ok(Sizing {
            cpus: 1,
            memory_mib: 1024
        })
    );
    let small = Limits {
        cpu_millis: Some(100),
        memory: Some(512 * MIB),
    };
    assert_eq!(
        decide(None, None, small),
        Ok(Sizing {
            cpus: 1,
            memory_mib: 320
        })
    );
}

#[test]
fn a_memory_limit_too_small_for_qemu_is_an_error() {
    let tiny = Limits {
        cpu_millis: None,
        memory: Some(200 * MIB),
    };
    let err = decide(None, None, tiny).expect_err("too small");
    assert!(err.to_string().contains("resources.limits.memory"), "{err}");
    decide(None, Some(ByteSize(128 * MIB)), tiny).expect("explicit VM_MEMORY wins");
}

//! The real binary supervising a shell script: exit codes, signals, reaping — as a child
//! subreaper, and as PID 1 of a fresh PID namespace.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{require_root, Running, BIN};

const T: Duration = Duration::from_secs(20);

/// `kvm-manager supervise -- sh -c SCRIPT` directly (we are a subreaper, not PID 1).
fn supervise(script: &str, extra_env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(["supervise", "--", "sh", "-c", script])
        .env("LOG_LEVEL", "debug");
    command.envs(extra_env.iter().copied());
    Running::spawn(&mut command)
}

/// The same, as PID 1 of a new PID namespace with its own /proc.
fn supervise_as_pid1(script: &str, extra_env: &[(&str, &str)]) -> Running {
    let mut command = Command::new("unshare");
    command
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            BIN,
            "supervise",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("LOG_LEVEL", "debug");
    command.envs(extra_env.iter().copied());
    Running::spawn(&mut command)
}

/// The host pid of the namespace's PID 1: the only child of `unshare`.
fn pid1_of(running: &Running) -> Pid {
    let unshare = running.child.id();
    let path = format!("/proc/{unshare}/task/{unshare}/children");
    for _ in 0..200 {
        let children = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return Pid::from_raw(pid.parse().expect("numeric pid"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("unshare never forked kvm-manager");
}

/// Prints the parent pid of the script and the number of zombies in its PID namespace.
const REPORT: &str = r#"
set -- $(cat /proc/$$/stat); echo "ppid=$4"
z=0
for f in /proc/[0-9]*/stat; do
  line=$(cat "$f" 2>/dev/null) || continue
  case "$line" in *") Z "*) z=$((z+1));; esac
done
echo "zombies=$z"
"#;

#[test]
fn child_exit_code_becomes_ours() {
    let mut running = supervise("exit 7", &[]);
    assert_eq!(running.wait(T).code(), Some(7), "{}", running.output());
}

#[test]
fn child_killed_by_a_signal_gives_128_plus_signo() {
    let mut running = supervise("kill -KILL $$", &[]);
    assert_eq!(running.wait(T).code(), Some(137), "{}", running.output());
}

#[test]
fn missing_program_is_named_in_the_error() {
    let mut command = Command::new(BIN);
    command.args(["supervise", "--", "/nonexistent/qemu"]);
    let mut running = Running::spawn(&mut command);
    assert_eq!(running.wait(T).code(), Some(6), "{}", running.output());
    assert!(
        running
            .output()
            .contains("could not start \"/nonexistent/qemu\""),
        "{}",
        running.output()
    );
}

#[test]
fn the_child_starts_with_nothing_blocked_and_default_actions() {
    // We block the signals our signalfd consumes and std ignores SIGPIPE; here our own parent
    // also ignores SIGHUP (as `nohup` does). Masks and ignored signals survive execve unless
    // the spawn resets them. grep reports its own status (not through sh: dash clears its
    // signal mask when it starts).
    let mut command = Command::new("sh");
    command.args([
        "-c",
        "trap '' HUP; exec \"$0\" supervise -- grep -E '^Sig(Blk|Ign):' /proc/self/status",
        BIN,
    ]);
    let mut running = Running::spawn(&mut command);
    assert_eq!(running.wait(T).code(), Some(0), "{}", running.output());
    let output = running.output();
    let mask = |name: &str| {
        let line = output
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} line in: {output}"));
        u64::from_str_radix(line.trim(), 16).expect("a hex signal mask")
    };
    assert_eq!(mask("SigBlk:"), 0, "{output}");
    for signal in [Signal::SIGPIPE, Signal::SIGHUP] {
        let bit = 1u64 << (signal as i32 - 1);
        assert_eq!(mask("SigIgn:") & bit, 0, "{signal} is ignored: {output}");
    }
}

#[test]
fn orphans_are_reaped_by_the_subreaper_when_not_pid1() {
    // The orphan exits while the script still runs; then the script checks it is not a zombie.
    let script = r#"
sh -c 'sleep 0.2 & echo $! > "$0"' "$TMPFILE"
sleep 1
orphan=$(cat "$TMPFILE")
if [ -e /proc/$orphan/stat ]; then set -- $(cat /proc/$orphan/stat); echo "orphan-state=$3"; else echo "orphan-state=gone"; fi
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("orphan.pid");
    let file = file.to_str().expect("utf-8 path");
    let mut running = supervise(script, &[("TMPFILE", file)]);
    let status = running.wait(T);
    assert_eq!(status.code(), Some(0), "{}", running.output());
    running.wait_for_line("orphan-state=gone", T);
    running.wait_for_line("reaped orphan", T);
}

#[test]
fn as_pid1_orphans_leave_no_zombie() {
    if !require_root("as_pid1_orphans_leave_no_zombie") {
        return;
    }
    let script =
        format!("( sleep 0.2 & ); ( sleep 0.3 & ); sh -c 'sleep 0.1 &'; sleep 1.5; {REPORT}");
    let mut running = supervise_as_pid1(&script, &[]);
    assert_eq!(running.wait(T).code(), Some(0), "{}", running.output());
    running.wait_for_line("ppid=1", T);
    running.wait_for_line("zombies=0", T);
    let reaped = running
        .seen
        .iter()
        .filter(|l| l.contains("reaped orphan"))
        .count();
    assert!(
        reaped >= 3,
        "expected 3 orphans reaped by PID 1, saw {reaped}:\n{}",
        running.output()
    );
}

#[test]
fn as_pid1_sigterm_reaches_the_child_and_its_code_becomes_ours() {
    if !require_root("as_pid1_sigterm_reaches_the_child_and_its_code_becomes_ours") {
        return;
    }
    let script = "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done";
    let mut running = supervise_as_pid1(script, &[]);
    running.wait_for_line("ready", T);
    kill(pid1_of(&running), Signal::SIGTERM).expect("signal PID 1");
    assert_eq!(running.wait(T).code(), Some(42), "{}", running.output());
    running.wait_for_line("got-term", T);
    running.wait_for_line("shutdown requested", T);
}

#[test]
fn as_pid1_job_control_signals_are_forwarded() {
    if !require_root("as_pid1_job_control_signals_are_forwarded") {
        return;
    }
    let script =
        "trap 'echo got-HUP' HUP; trap 'echo got-USR1' USR1; trap 'echo got-WINCH' WINCH; \
                  trap 'echo got-USR2; exit 0' USR2; echo ready; while :; do sleep 0.05; done";
    let mut running = supervise_as_pid1(script, &[]);
    running.wait_for_line("ready", T);
    let pid1 = pid1_of(&running);
    for signal in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGWINCH,
        Signal::SIGUSR2,
    ] {
        kill(pid1, signal).expect("signal PID 1");
        running.wait_for_line(&format!("got-{}", &signal.as_str()[3..]), T);
    }
    assert_eq!(running.wait(T).code(), Some(0), "{}", running.output());
}

#[test]
fn as_pid1_a_child_ignoring_sigterm_is_killed_after_the_grace_period() {
    if !require_root("as_pid1_a_child_ignoring_sigterm_is_killed_after_the_grace_period") {
        return;
    }
    let script = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
    let mut running = supervise_as_pid1(script, &[("SHUTDOWN_TIMEOUT", "1s")]);
    running.wait_for_line("ready", T);
    kill(pid1_of(&running), Signal::SIGTERM).expect("signal PID 1");
    assert_eq!(running.wait(T).code(), Some(137), "{}", running.output());
    running.wait_for_line("still running after the grace period", T);
}

#[test]
fn as_pid1_a_killed_child_gives_128_plus_signo() {
    if !require_root("as_pid1_a_killed_child_gives_128_plus_signo") {
        return;
    }
    let mut running = supervise_as_pid1(&format!("{REPORT} kill -SEGV $$"), &[]);
    assert_eq!(
        running.wait(T).code(),
        Some(128 + 11),
        "{}",
        running.output()
    );
    running.wait_for_line("ppid=1", T);
}

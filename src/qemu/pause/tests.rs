//! The pause decisions, driven by QMP events, free-space readings and a clock.

use serde_json::json;

use super::*;

const PLENTY: Option<u64> = Some(RESUME_FREE * 4);

/// qemu 7.2's event when a qcow2 overlay cannot grow on a full volume.
fn enospc() -> Event {
    Event::from_qmp(
        "BLOCK_IO_ERROR",
        &json!({"device": "disk0", "nospace": true, "node-name": "#block153",
                "reason": "No space left on device", "operation": "write", "action": "stop"}),
    )
}

fn full_pause(pauses: &mut Pauses, now: Instant) -> Option<Change> {
    assert_eq!(pauses.on_event(enospc(), now), None);
    pauses.on_event(Event::Stop, now)
}

#[test]
fn reads_qemus_block_io_error() {
    assert_eq!(
        enospc(),
        Event::DiskError {
            device: "disk0".into(),
            operation: "write".into(),
            stops: true,
            nospace: true,
            reason: "No space left on device".into(),
        }
    );
    let by_node = Event::from_qmp(
        "BLOCK_IO_ERROR",
        &json!({"device": "", "node-name": "pet", "operation": "read", "action": "report",
                "reason": "Input/output error"}),
    );
    assert!(
        matches!(&by_node, Event::DiskError { device, stops: false, nospace: false, .. } if device == "pet"),
        "{by_node:?}"
    );
    assert_eq!(Event::from_qmp("STOP", &Value::Null), Event::Stop);
    assert_eq!(Event::from_qmp("RESUME", &Value::Null), Event::Resume);
    assert_eq!(
        Event::from_qmp("SHUTDOWN", &json!({"guest": true})),
        Event::Other
    );
}

#[test]
fn a_full_volume_pauses_until_enough_space_is_free_then_resumes() {
    let t0 = Instant::now();
    let mut pauses = Pauses::default();
    let change = full_pause(&mut pauses, t0);
    assert_eq!(
        change,
        Some(Change::Paused(Pause::NoSpace {
            device: "disk0".into()
        }))
    );
    assert!(pauses.watching_space());
    for free in [None, Some(0), Some(RESUME_FREE - 1)] {
        assert_eq!(pauses.on_free_space(free, t0), Decision::Wait, "{free:?}");
    }
    assert_eq!(
        pauses.on_free_space(Some(RESUME_FREE), t0 + POLL_EVERY),
        Decision::Resume { attempt: 1 }
    );
    assert_eq!(
        pauses.on_event(Event::Resume, t0 + POLL_EVERY),
        Some(Change::Resumed)
    );
    assert_eq!(pauses.current(), None);
    assert!(!pauses.watching_space());
}

#[test]
fn errors_of_requests_in_flight_do_not_change_the_cause() {
    let t0 = Instant::now();
    let mut pauses = Pauses::default();
    pauses.on_event(enospc(), t0);
    let other = Event::DiskError {
        device: "disk0".into(),
        operation: "write".into(),
        stops: true,
        nospace: false,
        reason: "Input/output error".into(),
    };
    assert_eq!(pauses.on_event(other.clone(), t0), None);
    assert!(matches!(
        pauses.on_event(Event::Stop, t0),
        Some(Change::Paused(Pause::NoSpace { .. }))
    ));
    // More errors and a second STOP while paused change nothing.
    assert_eq!(pauses.on_event(other, t0), None);
    assert_eq!(pauses.on_event(Event::Stop, t0), None);
    assert!(pauses.watching_space());
}

#[test]
fn an_operators_stop_is_reported_and_never_resumed() {
    let t0 = Instant::now();
    let mut pauses = Pauses::default();
    let change = pauses.on_event(Event::Stop, t0);
    assert_eq!(
        change,
        Some(Change::Paused(Pause::Stopped {
            status: "paused".into()
        }))
    );
    assert!(!pauses.watching_space());
    assert_eq!(
        pauses.on_free_space(PLENTY, t0 + STABLE * 10),
        Decision::Wait
    );
    // The operator's `cont`.
    assert_eq!(pauses.on_event(Event::Resume, t0), Some(Change::Resumed));
}

#[test]
fn another_io_error_that_stops_the_vm_is_not_resumed() {
    let t0 = Instant::now();
    let mut pauses = Pauses::default();
    let eio = Event::DiskError {
        device: "disk0".into(),
        operation: "write".into(),
        stops: true,
        nospace: false,
        reason: "Input/output error".into(),
    };
    assert_eq!(pauses.on_event(eio, t0), None);
    let change = pauses.on_event(Event::Stop, t0);
    let Some(Change::Paused(pause)) = change else {
        panic!("{change:?}");
    };
    assert_eq!(pause.label(), "io-error");
    assert!(pause.to_string().contains("Input/output error"), "{pause}");
    assert_eq!(pauses.on_free_space(PLENTY, t0), Decision::Wait);
}

#[test]
fn an_error_passed_to_the_guest_is_reported_without_a_pause() {
    let mut pauses = Pauses::default();
    let reported = Event::from_qmp(
        "BLOCK_IO_ERROR",
        &json!({"device": "disk0", "operation": "read", "action": "report",
                "reason": "Input/output error"}),
    );
    assert_eq!(
        pauses.on_event(reported, Instant::now()),
        Some(Change::DiskError {
            device: "disk0".into(),
            operation: "read".into(),
            reason: "Input/output error".into()
        })
    );
    assert_eq!(pauses.current(), None);
}

#[test]
fn pausing_again_soon_after_a_resume_backs_off_doubling() {
    let t0 = Instant::now();
    let mut pauses = Pauses::default();
    full_pause(&mut pauses, t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for attempt in 1..=4 {
        // Poll until the decision is to resume; record how long that took.
        let paused_at = now;
        while pauses.on_free_space(PLENTY, now) == Decision::Wait {
            now += POLL_EVERY;
            assert!(now < t0 + Duration::from_secs(3600), "never resumed");
        }
        waits.push(now - paused_at);
        assert_eq!(pauses.current().map(Pause::label), Some("no-space"));
        assert_eq!(pauses.on_event(Event::Resume, now), Some(Change::Resumed));
        // The guest fills the space again a second later.
        now += Duration::from_secs(1);
        assert!(full_pause(&mut pauses, now).is_some(), "attempt {attempt}");
    }
    assert_eq!(waits[0], Duration::ZERO, "the first resume is not delayed");
    assert!(
        waits[1] >= BACKOFF_FIRST - Duration::from_secs(1),
        "{waits:?}"
    );
    assert!(
        waits[2] >= BACKOFF_FIRST * 2 - Duration::from_secs(1),
        "{waits:?}"
    );
    assert!(
        waits[3] >= BACKOFF_FIRST * 4 - Duration::from_secs(1),
        "{waits:?}"
    );
}

#[test]
fn a_vm_that_ran_steadily_after_a_resume_is_resumed_at_once_next_time() {
    let t0 = Instant::now();
    let mut pauses = Pauses::default();
    full_pause(&mut pauses, t0);
    assert_eq!(
        pauses.on_free_space(PLENTY, t0),
        Decision::Resume { attempt: 1 }
    );
    pauses.on_event(Event::Resume, t0);
    let later = t0 + STABLE * 2;
    full_pause(&mut pauses, later);
    assert_eq!(
        pauses.on_free_space(PLENTY, later),
        Decision::Resume { attempt: 1 }
    );
}

#[test]
fn a_failed_cont_is_retried_after_the_backoff() {
    let t0 = Instant::now();
    let mut pauses = Pauses::default();
    full_pause(&mut pauses, t0);
    assert!(matches!(
        pauses.on_free_space(PLENTY, t0),
        Decision::Resume { .. }
    ));
    // No RESUME came: still paused; no second `cont` before the backoff.
    assert_eq!(
        pauses.on_free_space(PLENTY, t0 + POLL_EVERY),
        Decision::Wait
    );
    assert_eq!(
        pauses.on_free_space(PLENTY, t0 + BACKOFF_FIRST),
        Decision::Resume { attempt: 2 }
    );
}

#[test]
fn a_status_read_after_missed_events_finds_the_pause_and_the_resume() {
    let t0 = Instant::now();
    let mut pauses = Pauses::default();
    let full = Event::Status {
        running: false,
        status: "io-error".into(),
        nospace_device: Some("disk0".into()),
    };
    assert_eq!(
        pauses.on_event(full, t0),
        Some(Change::Paused(Pause::NoSpace {
            device: "disk0".into()
        }))
    );
    let running = Event::Status {
        running: true,
        status: "running".into(),
        nospace_device: None,
    };
    assert_eq!(pauses.on_event(running.clone(), t0), Some(Change::Resumed));
    assert_eq!(pauses.on_event(running, t0), None, "nothing new");
    let stopped = Event::Status {
        running: false,
        status: "paused".into(),
        nospace_device: None,
    };
    assert_eq!(
        pauses.on_event(stopped, t0).map(|c| match c {
            Change::Paused(p) => p.label(),
            _ => "other",
        }),
        Some("stopped")
    );
}

#[test]
fn backoff_is_capped() {
    assert_eq!(backoff(1), BACKOFF_FIRST);
    assert_eq!(backoff(2), BACKOFF_FIRST * 2);
    assert_eq!(backoff(40), BACKOFF_MAX);
    assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
}

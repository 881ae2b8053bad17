//! Caller descriptors polled in the supervisor's loop (PID 1's power button).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use bramble_supervisor::{Options, Supervisor};

#[test]
fn a_watched_descriptor_is_reported_once_when_readable() {
    let mut sup = Supervisor::new(Vec::new(), Options::default()).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let id = sup.watch(OwnedFd::from(reader));

    // Nothing written: a step reports nothing.
    sup.step(Duration::from_millis(50));
    assert!(sup.take_readable_watches().is_empty());

    let mut writer = writer;
    writer.write_all(b"x").unwrap();
    let started = Instant::now();
    sup.step(Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "poll did not wake for the watched fd"
    );
    assert_eq!(sup.take_readable_watches(), vec![id]);
    assert!(sup.take_readable_watches().is_empty(), "reported twice");
    assert!(sup.watched(id).is_some());

    // Once unwatched it is no longer polled.
    assert!(sup.unwatch(id).is_some());
    sup.step(Duration::from_millis(50));
    assert!(sup.take_readable_watches().is_empty());
    assert!(sup.watched(id).is_none());
}

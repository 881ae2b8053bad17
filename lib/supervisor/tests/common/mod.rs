//! Helpers shared by the integration tests.
#![allow(dead_code)]
// Test helpers: panicking on a broken invariant is the point.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_supervisor::{Event, ServiceDef, ServiceState, Shutdown, Supervisor};

/// Generous: the machine may be loaded.
pub const LONG: Duration = Duration::from_secs(20);

pub fn sh(name: &str, script: &str) -> ServiceDef {
    ServiceDef::new(name, ["/bin/sh", "-c", script])
}

/// A service that becomes ready after `delay` via the readiness fd, then sleeps.
pub fn notifying(name: &str, delay: &str) -> ServiceDef {
    let mut d = sh(
        name,
        &format!("sleep {delay}; echo READY=1 >&$BRAMBLE_READY_FD; exec sleep 100"),
    );
    d.notify_ready = true;
    d
}

/// Steps the loop until `pred` holds or `timeout` passes.
pub fn wait_for(
    sup: &mut Supervisor,
    timeout: Duration,
    mut pred: impl FnMut(&Supervisor) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred(sup) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            dump(sup);
            return false;
        }
        sup.step((deadline - now).min(Duration::from_millis(50)));
    }
}

/// Steps the loop for `d` regardless.
pub fn run_for(sup: &mut Supervisor, d: Duration) {
    assert!(sup.run_until(Instant::now() + d).is_none());
}

pub fn state(sup: &Supervisor, name: &str) -> ServiceState {
    sup.status(name).unwrap().state
}

pub fn pid(sup: &Supervisor, name: &str) -> Option<i32> {
    sup.status(name).unwrap().pid
}

pub fn is(sup: &Supervisor, name: &str, st: ServiceState) -> bool {
    state(sup, name) == st
}

pub fn all_ready(sup: &Supervisor) -> bool {
    sup.services()
        .iter()
        .all(|s| s.state == ServiceState::Ready)
}

/// Shuts down and checks that everything stopped in bounded time.
pub fn shutdown(sup: &mut Supervisor) {
    sup.request_shutdown(Shutdown::PowerOff);
    assert_eq!(
        sup.run_until(Instant::now() + LONG),
        Some(Shutdown::PowerOff)
    );
    for s in sup.services() {
        assert!(s.pid.is_none(), "{} still running", s.name);
    }
}

/// State changes of one service, in order.
pub fn transitions(sup: &Supervisor, name: &str) -> Vec<Event> {
    sup.events_since(0)
        .into_iter()
        .filter(|e| e.service.as_deref() == Some(name) && e.to.is_some())
        .collect()
}

/// Sequence number of the first event moving `name` into a state named `to`.
pub fn first_seq(sup: &Supervisor, name: &str, to: &str) -> Option<u64> {
    sup.events_since(0)
        .into_iter()
        .find(|e| e.service.as_deref() == Some(name) && e.to.is_some_and(|s| s.name() == to))
        .map(|e| e.seq)
}

/// Times at which `name` entered `Starting`.
pub fn start_times(sup: &Supervisor, name: &str) -> Vec<Instant> {
    transitions(sup, name)
        .into_iter()
        .filter(|e| e.to == Some(ServiceState::Starting))
        .map(|e| e.at)
        .collect()
}

/// A console sink the test can read.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Prints the state and events (shown when a test fails).
pub fn dump(sup: &Supervisor) {
    for s in sup.services() {
        eprintln!("status: {s:?}");
    }
    for e in sup.events_since(0) {
        eprintln!(
            "event {} {:?} {:?} -> {:?}: {}",
            e.seq, e.service, e.from, e.to, e.message
        );
    }
}

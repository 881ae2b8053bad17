//! Stage 2's main loop: the service supervisor, the power button, and the
//! boot reports on the console.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bramble_supervisor::{
    LogOptions, Options, ServiceState, Shutdown, Supervisor, load_dir, signals,
};

use crate::error::{Error, Result};
use crate::shutdown::Kind;
use crate::stage2::{CONTROL_SOCKET, LOG_DIR, SERVICES_DIR};
use crate::test_fault::TestFault;

/// The service whose readiness makes the node "ready".
const API_SERVICE: &str = "apid";
/// The work deferred until "ready" (coldplug of the root filesystem's
/// modules, the new RNG seed) waits for it at most this long.
const DEFERRED_LATEST: Duration = Duration::from_secs(10);
/// How long after "ready" the idle memory report is taken.
const IDLE_AFTER: Duration = Duration::from_secs(5);

pub fn run() -> Result<Kind> {
    let signal_fd =
        signals::block_and_open().map_err(|e| Error::Supervisor(format!("signalfd: {e}")))?;
    // Ctrl-Alt-Del becomes SIGINT to PID 1 (an orderly reboot) instead of
    // an immediate restart.
    if let Err(err) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!("disabling the immediate Ctrl-Alt-Del reboot: {err}");
    }
    let defs = load_dir(Path::new(SERVICES_DIR)).map_err(|e| Error::Supervisor(e.to_string()))?;
    let console = OpenOptions::new().write(true).open("/dev/console").ok();
    let mut sup = Supervisor::new(
        defs,
        Options {
            signal_fd: Some(signal_fd),
            reap_orphans: true,
            control_socket: Some(CONTROL_SOCKET.into()),
            log: LogOptions {
                dir: Some(LOG_DIR.into()),
                ..LogOptions::default()
            },
            console: console.map(|f| Box::new(f) as Box<dyn std::io::Write + Send>),
            ..Options::default()
        },
    )
    .map_err(|e| Error::Supervisor(e.to_string()))?;

    // Input devices whose drivers the initramfs loaded are watched from the
    // start; ones that appear with the root filesystem's modules are added
    // after coldplug. Each is opened once.
    let mut watched_inputs = HashSet::new();
    let watched = watch_power_buttons(&mut sup, Path::new("/dev/input"), &mut watched_inputs);
    tracing::info!("supervising services; {watched} input device(s) watched for the power key");

    // Devices that appear from now on (a USB Ethernet adapter behind a hub,
    // a PHY) get their drivers from uevents; the socket queues them from
    // here, and is read once coldplug has loaded the module database.
    let mut hotplug = match crate::hotplug::open() {
        Ok(fd) => Some(fd),
        Err(err) => {
            tracing::warn!("uevent socket: {err}; devices added later get no driver");
            None
        }
    };
    let mut hotplug_watch = None;
    let mut modules = None;

    let mut report = BootReport::default();
    // Drivers for devices the initramfs had no module for are loaded, and
    // the RNG seed is renewed, once the API is up (or after DEFERRED_LATEST):
    // walking sysfs takes a while on a slow machine, an fsync on an SD card
    // too, and this loop must not keep the node from being ready.
    let mut deferred_pending = true;
    let deferred_latest = Instant::now() + DEFERRED_LATEST;
    loop {
        let now = Instant::now();
        let wait = if deferred_pending {
            report
                .wait(now)
                .min(deferred_latest.saturating_duration_since(now))
        } else {
            report.wait(now)
        };
        if let Some(kind) = sup.step(wait) {
            return Ok(match kind {
                Shutdown::PowerOff => Kind::PowerOff,
                Shutdown::Reboot => Kind::Reboot,
            });
        }
        for id in sup.take_readable_watches() {
            if Some(id) == hotplug_watch {
                if let (Some(fd), Some(db)) = (sup.watched(id), modules.as_mut())
                    && let Err(err) = crate::hotplug::drain(fd, db, true)
                {
                    tracing::warn!("reading uevents: {err}; devices added later get no driver");
                    sup.unwatch(id);
                    hotplug_watch = None;
                }
                continue;
            }
            let Some(fd) = sup.watched(id) else { continue };
            match power_key_pressed(fd) {
                Ok(true) => {
                    tracing::info!("power key pressed: powering off");
                    sup.request_shutdown(Shutdown::PowerOff);
                }
                Ok(false) => {}
                Err(errno) => {
                    tracing::warn!("input device stopped working ({errno}); no longer watched");
                    sup.unwatch(id);
                }
            }
        }
        report.update(&sup, Instant::now());
        if deferred_pending && (report.ready_at.is_some() || Instant::now() >= deferred_latest) {
            deferred_pending = false;
            crate::rng::renew_seed(
                &Path::new(crate::stage2::STATE_DIR).join(crate::stage2::SEED_FILE),
            );
            modules = crate::stage2::coldplug_rootfs_modules();
            if modules.is_some()
                && let Some(fd) = hotplug.take()
            {
                hotplug_watch = Some(sup.watch(fd));
            }
            let added = watch_power_buttons(&mut sup, Path::new("/dev/input"), &mut watched_inputs);
            if added > 0 {
                tracing::info!("{added} more input device(s) watched for the power key");
            }
            if report.ready_at.is_some()
                && let Some(fault @ TestFault::PanicAfterReady) =
                    TestFault::requested(&fs::read_to_string("/proc/cmdline").unwrap_or_default())
            {
                panic!("injected by {fault} on the kernel command line");
            }
        }
    }
}

/// Watches every evdev device in `dir` not in `seen` yet; returns how many.
fn watch_power_buttons(sup: &mut Supervisor, dir: &Path, seen: &mut HashSet<PathBuf>) -> usize {
    let mut added = 0;
    for (path, fd) in power_buttons(dir, seen) {
        seen.insert(path);
        sup.watch(fd);
        added += 1;
    }
    added
}

/// Opens every evdev device not in `skip`, non-blocking. Any of them may send
/// KEY_POWER: QEMU's power button (gpio-keys), a Pi's GPIO shutdown button, a
/// keyboard.
fn power_buttons(dir: &Path, skip: &HashSet<PathBuf>) -> Vec<(PathBuf, OwnedFd)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("event"))
                && !skip.contains(p)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|path| {
            OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(&path)
                .map_err(|e| tracing::warn!("opening {}: {e}", path.display()))
                .ok()
                .map(|f| (path, OwnedFd::from(f)))
        })
        .collect()
}

/// Size of `struct input_event` on a 64-bit kernel: a 16-byte timeval, then
/// type (u16), code (u16), value (i32).
const INPUT_EVENT_BYTES: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Drains pending input events; true if one was a KEY_POWER press.
fn power_key_pressed(fd: BorrowedFd<'_>) -> std::result::Result<bool, nix::Error> {
    let mut buf = [0u8; INPUT_EVENT_BYTES * 32];
    let mut pressed = false;
    for _ in 0..16 {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return Err(nix::Error::ENODEV),
            Ok(n) => pressed |= has_power_press(&buf[..n]),
            Err(nix::Error::EAGAIN) => break,
            Err(nix::Error::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(pressed)
}

fn has_power_press(events: &[u8]) -> bool {
    events.chunks_exact(INPUT_EVENT_BYTES).any(|ev| {
        let kind = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// The console lines a person (and `make bench`) reads: when the API became
/// ready, and the node's memory once it has settled.
#[derive(Debug, Default)]
struct BootReport {
    ready_at: Option<Instant>,
    idle_reported: bool,
}

impl BootReport {
    fn wait(&self, now: Instant) -> Duration {
        match self.ready_at {
            Some(at) if !self.idle_reported => (at + IDLE_AFTER).saturating_duration_since(now),
            _ => Duration::from_secs(60),
        }
    }

    fn update(&mut self, sup: &Supervisor, now: Instant) {
        if self.ready_at.is_none() {
            if sup
                .status(API_SERVICE)
                .is_some_and(|s| s.state == ServiceState::Ready)
            {
                self.ready_at = Some(now);
                tracing::info!(
                    "node ready: API ready {:.3} s after kernel start (port 50000)",
                    crate::logging::uptime_secs()
                );
            }
            return;
        }
        if !self.idle_reported && self.ready_at.is_some_and(|at| now >= at + IDLE_AFTER) {
            self.idle_reported = true;
            let mut parts = vec![format!("init rss {} KiB", rss_kib("self").unwrap_or(0))];
            for svc in sup.services() {
                if let Some(pid) = svc.pid {
                    parts.push(format!(
                        "{} rss {} KiB",
                        svc.name,
                        rss_kib(&pid.to_string()).unwrap_or(0)
                    ));
                }
            }
            tracing::info!("idle memory: {}", parts.join(", "));
        }
    }
}

/// VmRSS of /proc/<pid>, in KiB.
fn rss_kib(pid: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut ev = vec![0u8; 16];
        ev.extend_from_slice(&kind.to_ne_bytes());
        ev.extend_from_slice(&code.to_ne_bytes());
        ev.extend_from_slice(&value.to_ne_bytes());
        ev
    }

    #[test]
    fn recognises_a_power_key_press_only() {
        let mut events = event(EV_KEY, KEY_POWER, 0); // release
        events.extend(event(0, 0, 0)); // SYN
        assert!(!has_power_press(&events));
        events.extend(event(EV_KEY, 30, 1)); // 'a'
        assert!(!has_power_press(&events));
        events.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(has_power_press(&events));
    }

    #[test]
    fn reads_rss_of_this_process() {
        assert!(rss_kib("self").is_some_and(|kib| kib > 0));
    }
}

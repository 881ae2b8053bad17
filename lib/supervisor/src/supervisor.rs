//! The single-threaded supervisor and its event loop.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::unistd::Pid as NixPid;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitIdOptions, WaitOptions};
use tracing::{debug, info, warn};

use crate::control::{Conn, Line};
use crate::def::{
    CHILD_READY_FD, DEFAULT_PATH, READY_FD_ENV, RestartPolicy, ServiceDef, validate_set,
};
use crate::error::Error;
use crate::logs::{LineSplitter, LogFile, LogOptions, LogRing, rfc3339_ms};
use crate::protocol::{
    DEFAULT_LOG_TAIL, EventInfo, LogLine, MAX_LOG_TAIL, Request, Response, ServiceInfo, Shutdown,
};
use crate::signals;
use crate::state::{Event, ExitStatus, ServiceState, ServiceStatus, now_unix_ms};

/// Bytes read from one log pipe per read call.
const LOG_READ_CHUNK: usize = 16 * 1024;
/// Log pipe reads per wake-up and service (so at most 64 KiB).
const LOG_READS_PER_WAKE: usize = 4;
/// Log pipe reads when draining after an exit.
const LOG_READS_ON_EXIT: usize = 16;
/// Children reaped per `waitpid(-1)` pass before yielding to the loop.
const MAX_REAP_PER_PASS: usize = 1024;
/// Connections accepted per wake-up.
const MAX_ACCEPT_PER_WAKE: usize = 8;
/// Requests handled per connection and wake-up.
const MAX_REQUESTS_PER_WAKE: usize = 8;
/// Signal reads per wake-up.
const MAX_SIGNAL_READS: usize = 4;
/// Bytes kept of a partial readiness message.
const MAX_READY_BUF: usize = 256;
/// How often orphans are reaped even without SIGCHLD (with `reap_orphans`).
const REAP_INTERVAL: Duration = Duration::from_secs(5);
/// `__WALL`: also reap children that were created with `clone` and a non-SIGCHLD exit signal.
const WALL: u32 = 0x4000_0000;

/// How the supervisor runs. `Options::default()` suits tests; PID 1 sets
/// `signal_fd`, `reap_orphans`, `control_socket`, `log.dir` and `console`.
pub struct Options {
    /// Captured-output settings.
    pub log: LogOptions,
    /// Control socket path (on the node `/run/bramble/init.sock`); created with
    /// mode 0600, a stale socket at the path is replaced. A bind failure is
    /// logged and recorded as an event; the supervisor runs on without it.
    pub control_socket: Option<PathBuf>,
    /// A signalfd (see [`signals::block_and_open`]) or any fd yielding 128-byte
    /// `signalfd_siginfo` records. Made non-blocking by the supervisor.
    pub signal_fd: Option<OwnedFd>,
    /// Reap every child with `waitpid(-1)` on SIGCHLD (and every 5 s): PID 1
    /// must. Never set this in a process where other code waits for its own
    /// children (e.g. parallel tests), it would steal their exit statuses.
    pub reap_orphans: bool,
    /// Where `log_console` services' lines are echoed (`[name] line`); PID 1
    /// passes `/dev/console`. Writes are blocking.
    pub console: Option<Box<dyn Write + Send>>,
    /// Condition paths are re-checked this often (default 200 ms).
    pub condition_poll_interval: Duration,
    /// A service that stays up this long gets its backoff and crash-loop
    /// counters reset (default 10 s).
    pub backoff_reset_after: Duration,
    /// After SIGKILL, give up waiting for the process after this (default 5 s).
    pub kill_grace: Duration,
    /// Events kept (default 1024).
    pub max_events: usize,
    /// Control connections served at once (default 16).
    pub max_clients: usize,
    /// Idle control connections are closed after this (default 60 s).
    pub client_idle_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            log: LogOptions::default(),
            control_socket: None,
            signal_fd: None,
            reap_orphans: false,
            console: None,
            condition_poll_interval: Duration::from_millis(200),
            backoff_reset_after: Duration::from_secs(10),
            kill_grace: Duration::from_secs(5),
            max_events: 1024,
            max_clients: 16,
            client_idle_timeout: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("log", &self.log)
            .field("control_socket", &self.control_socket)
            .field("signal_fd", &self.signal_fd)
            .field("reap_orphans", &self.reap_orphans)
            .field("console", &self.console.is_some())
            .field("condition_poll_interval", &self.condition_poll_interval)
            .field("backoff_reset_after", &self.backoff_reset_after)
            .field("kill_grace", &self.kill_grace)
            .field("max_events", &self.max_events)
            .field("max_clients", &self.max_clients)
            .field("client_idle_timeout", &self.client_idle_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
struct StopTimer {
    kill_at: Instant,
    give_up_at: Option<Instant>,
}

#[derive(Debug)]
struct Proc {
    pid: Pid,
    pidfd: OwnedFd,
    log_fd: Option<OwnedFd>,
    ready_fd: Option<OwnedFd>,
    ready_buf: Vec<u8>,
}

#[derive(Debug)]
struct Service {
    def: ServiceDef,
    deps: Vec<usize>,
    dependents: Vec<usize>,
    state: ServiceState,
    since_unix_ms: u64,
    /// Wanted running (false after stop requests and during shutdown).
    enabled: bool,
    /// Stop this one only, then start again.
    restart_requested: bool,
    proc: Option<Proc>,
    /// Incremented per spawn; stale poll tokens are ignored.
    generation: u64,
    restarts: u32,
    consecutive_failures: u32,
    restart_history: VecDeque<Instant>,
    next_restart: Option<Instant>,
    last_exit: Option<ExitStatus>,
    last_error: Option<String>,
    started_at: Option<Instant>,
    started_unix_ms: Option<u64>,
    stop: Option<StopTimer>,
    cond_next_check: Option<Instant>,
    /// Last reported reason for waiting (reported once per change).
    wait_reason: String,
    splitter: LineSplitter,
    ring: LogRing,
    file: Option<LogFile>,
    file_failing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Token {
    // Order = dispatch order: output and readiness before exits, so the last
    // lines of a dying service are captured before it is reaped.
    Signal,
    Log(usize, u64),
    Ready(usize, u64),
    Exit(usize, u64),
    Listener,
    Conn(usize),
    Watch(usize),
}

/// The supervisor. Create it with [`Supervisor::new`], then call [`run`](Self::run)
/// (PID 1) or drive it with [`step`](Self::step) / [`run_until`](Self::run_until).
///
/// Dropping it SIGKILLs every process still running and reaps it (bounded).
pub struct Supervisor {
    services: Vec<Service>,
    order: Vec<usize>,
    index: BTreeMap<String, usize>,
    log: LogOptions,
    console: Option<Box<dyn Write + Send>>,
    console_failing: bool,
    condition_poll_interval: Duration,
    backoff_reset_after: Duration,
    kill_grace: Duration,
    max_events: usize,
    client_idle_timeout: Duration,
    reap_orphans: bool,
    reap_pending: bool,
    last_reap: Instant,
    signal_fd: Option<OwnedFd>,
    listener: Option<UnixListener>,
    socket_path: Option<PathBuf>,
    conns: Vec<Option<Conn>>,
    events: VecDeque<Event>,
    next_seq: u64,
    shutdown: Option<Shutdown>,
    finished: bool,
    /// Caller-owned descriptors polled in the same loop (see [`Supervisor::watch`]).
    watches: Vec<Option<OwnedFd>>,
    readable_watches: Vec<usize>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("services", &self.index.keys().collect::<Vec<_>>())
            .field("socket_path", &self.socket_path)
            .field("shutdown", &self.shutdown)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

fn set_nonblocking(fd: impl AsFd) -> rustix::io::Result<()> {
    let fl = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, fl | rustix::fs::OFlags::NONBLOCK)
}

/// Open fd numbers of this process (bounded; empty if /proc is not mounted).
fn open_fds() -> Vec<i32> {
    const MAX_FDS: usize = 4096;
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.take(MAX_FDS)
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn bind_control_socket(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Sends `sig` to the service's process group and, if the leader has left
/// that group, to the leader itself through its pidfd.
fn signal_proc(proc: &Proc, sig: Signal) {
    let group_ok = rustix::process::kill_process_group(proc.pid, sig).is_ok();
    let leader_in_group = rustix::process::getpgid(Some(proc.pid)).is_ok_and(|g| g == proc.pid);
    if (!group_ok || !leader_in_group)
        && let Err(e) = rustix::process::pidfd_send_signal(&proc.pidfd, sig)
    {
        debug!(
            pid = proc.pid.as_raw_nonzero().get(),
            "pidfd_send_signal: {e}"
        );
    }
}

fn exit_status_from_waitid(st: &rustix::process::WaitIdStatus) -> ExitStatus {
    if let Some(code) = st.exit_status() {
        ExitStatus::Code(code)
    } else if let Some(sig) = st.terminating_signal() {
        ExitStatus::Signal(sig)
    } else {
        ExitStatus::Code(-1)
    }
}

fn exit_status_from_wait(st: rustix::process::WaitStatus) -> ExitStatus {
    if let Some(code) = st.exit_status() {
        ExitStatus::Code(code)
    } else if let Some(sig) = st.terminating_signal() {
        ExitStatus::Signal(sig)
    } else {
        ExitStatus::Code(-1)
    }
}

impl Supervisor {
    /// Checks the definitions (see [`validate_set`]) and sets everything up;
    /// nothing is spawned before the first [`step`](Self::step).
    pub fn new(defs: Vec<ServiceDef>, opts: Options) -> Result<Self, Error> {
        let order = validate_set(&defs)?;
        let index: BTreeMap<String, usize> = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        let log = opts.log.normalized();
        let now_ms = now_unix_ms();
        let mut services: Vec<Service> = defs
            .into_iter()
            .map(|def| {
                let file = log.dir.as_deref().map(|d| LogFile::new(d, &def.name));
                Service {
                    deps: Vec::new(),
                    dependents: Vec::new(),
                    state: ServiceState::Waiting,
                    since_unix_ms: now_ms,
                    enabled: true,
                    restart_requested: false,
                    proc: None,
                    generation: 0,
                    restarts: 0,
                    consecutive_failures: 0,
                    restart_history: VecDeque::new(),
                    next_restart: None,
                    last_exit: None,
                    last_error: None,
                    started_at: None,
                    started_unix_ms: None,
                    stop: None,
                    cond_next_check: None,
                    wait_reason: String::new(),
                    splitter: LineSplitter::new(log.max_line_bytes),
                    ring: LogRing::new(log.ring_bytes),
                    file,
                    file_failing: false,
                    def,
                }
            })
            .collect();
        for i in 0..services.len() {
            let deps: Vec<usize> = services[i]
                .def
                .after
                .iter()
                .filter_map(|n| index.get(n).copied())
                .collect();
            for &d in &deps {
                if !services[d].dependents.contains(&i) {
                    services[d].dependents.push(i);
                }
            }
            services[i].deps = deps;
        }

        let mut sup = Self {
            services,
            order,
            index,
            log,
            console: opts.console,
            console_failing: false,
            condition_poll_interval: opts.condition_poll_interval.max(Duration::from_millis(10)),
            backoff_reset_after: opts.backoff_reset_after,
            kill_grace: opts.kill_grace,
            max_events: opts.max_events.clamp(16, 1 << 20),
            client_idle_timeout: opts.client_idle_timeout.max(Duration::from_millis(100)),
            reap_orphans: opts.reap_orphans,
            reap_pending: false,
            last_reap: Instant::now(),
            signal_fd: None,
            listener: None,
            socket_path: None,
            conns: Vec::new(),
            events: VecDeque::new(),
            next_seq: 1,
            shutdown: None,
            finished: false,
            watches: Vec::new(),
            readable_watches: Vec::new(),
        };
        sup.conns
            .resize_with(opts.max_clients.clamp(1, 1024), || None);

        if let Some(fd) = opts.signal_fd {
            if let Err(e) = set_nonblocking(&fd) {
                warn!("cannot make the signal fd non-blocking: {e}");
            }
            sup.signal_fd = Some(fd);
        }
        if let Some(path) = opts.control_socket {
            match bind_control_socket(&path) {
                Ok(l) => {
                    info!(path = %path.display(), "control socket listening");
                    sup.listener = Some(l);
                    sup.socket_path = Some(path);
                }
                Err(e) => {
                    let msg = format!("control socket {}: {e}; running without it", path.display());
                    warn!("{msg}");
                    sup.record(None, None, None, msg);
                }
            }
        }
        Ok(sup)
    }

    // ----- public queries and commands -------------------------------------

    /// Snapshot of every service, in dependency order.
    pub fn services(&self) -> Vec<ServiceStatus> {
        self.order.iter().map(|&i| self.status_of(i)).collect()
    }

    /// Snapshot of one service.
    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        self.index.get(name).map(|&i| self.status_of(i))
    }

    /// Events with `seq > since`, oldest first (at most `max_events` are kept).
    pub fn events_since(&self, since: u64) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }

    /// Sequence number of the newest event (0 if none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The last `tail` captured lines of a service.
    pub fn logs(&self, name: &str, tail: usize) -> Option<Vec<LogLine>> {
        self.index
            .get(name)
            .map(|&i| self.services[i].ring.tail(tail))
    }

    /// Path of the control socket, if it is listening.
    pub fn control_socket(&self) -> Option<&Path> {
        self.listener.as_ref().and(self.socket_path.as_deref())
    }

    /// The shutdown in progress, if any.
    pub fn shutdown_requested(&self) -> Option<Shutdown> {
        self.shutdown
    }

    /// Starts a service that is stopped, exited or failed (resetting its
    /// backoff), and whatever it (transitively) depends on that is down and not
    /// a completed one-shot. No-op for a running service.
    pub fn start(&mut self, name: &str) -> Result<(), Error> {
        let idx = self.lookup(name)?;
        if self.shutdown.is_some() {
            return Err(Error::ShuttingDown);
        }
        let mut stack = vec![idx];
        let mut seen = vec![false; self.services.len()];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            let satisfied = self.dep_satisfied(i);
            let s = &mut self.services[i];
            s.enabled = true;
            let target = i == idx;
            if s.proc.is_some() {
                if s.state == ServiceState::Stopping && !s.restart_requested {
                    // Being stopped: let it finish, then start it again.
                    s.restart_requested = true;
                }
            } else if target || !satisfied {
                self.reset_to_waiting(i, "start requested");
            }
            stack.extend(self.services[i].deps.iter().copied());
        }
        Ok(())
    }

    /// Stops a service after everything that (transitively) depends on it
    /// has stopped; those are stopped too. Returns once the stop is initiated.
    pub fn stop(&mut self, name: &str) -> Result<(), Error> {
        let idx = self.lookup(name)?;
        let mut stack = vec![idx];
        let mut seen = vec![false; self.services.len()];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            let s = &mut self.services[i];
            s.enabled = false;
            s.restart_requested = false;
            s.next_restart = None;
            stack.extend(s.dependents.iter().copied());
        }
        Ok(())
    }

    /// Stops only this service (dependents keep running) and starts it again
    /// without backoff; starts it if it is not running.
    pub fn restart(&mut self, name: &str) -> Result<(), Error> {
        let idx = self.lookup(name)?;
        if self.shutdown.is_some() {
            return Err(Error::ShuttingDown);
        }
        if self.services[idx].proc.is_some() {
            let s = &mut self.services[idx];
            s.enabled = true;
            s.restart_requested = true;
            Ok(())
        } else {
            self.start(name)
        }
    }

    /// Asks a running service to re-read its configuration (SIGHUP); a
    /// service that is not running is started instead, which reads it too.
    pub fn reload(&mut self, name: &str) -> Result<(), Error> {
        let idx = self.lookup(name)?;
        if self.shutdown.is_some() {
            return Err(Error::ShuttingDown);
        }
        let running = self.services[idx]
            .proc
            .as_ref()
            .filter(|_| self.services[idx].stop.is_none())
            .map(|proc| {
                signal_proc(proc, Signal::HUP);
                proc.pid.as_raw_nonzero().get()
            });
        match running {
            Some(pid) => {
                let msg = format!("reload requested: sent SIGHUP to pid {pid}");
                info!(service = name, "{msg}");
                self.record(Some(idx), None, None, msg);
                Ok(())
            }
            None => self.start(name),
        }
    }

    /// Starts an orderly shutdown: every service is stopped in reverse
    /// dependency order, then `run()` returns `kind`. The first request wins.
    pub fn request_shutdown(&mut self, kind: Shutdown) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(kind);
        let msg = format!("shutdown requested ({})", shutdown_name(kind));
        info!("{msg}");
        self.record(None, None, None, msg);
        for s in &mut self.services {
            s.enabled = false;
            s.restart_requested = false;
            s.next_restart = None;
        }
    }

    // ----- caller descriptors --------------------------------------------------

    /// Adds a descriptor to the loop's poll set: after a [`step`](Self::step)
    /// in which it became readable (or hung up), its id is returned once by
    /// [`take_readable_watches`](Self::take_readable_watches). PID 1 uses this
    /// for the power button. The caller reads it; a descriptor that keeps
    /// reporting errors should be [`unwatch`](Self::unwatch)ed.
    pub fn watch(&mut self, fd: OwnedFd) -> usize {
        self.watches.push(Some(fd));
        self.watches.len() - 1
    }

    /// Borrows a watched descriptor.
    pub fn watched(&self, id: usize) -> Option<BorrowedFd<'_>> {
        self.watches
            .get(id)
            .and_then(|w| w.as_ref())
            .map(AsFd::as_fd)
    }

    /// Removes a watched descriptor and gives it back.
    pub fn unwatch(&mut self, id: usize) -> Option<OwnedFd> {
        self.watches.get_mut(id).and_then(Option::take)
    }

    /// Ids of watched descriptors that became readable since the last call.
    pub fn take_readable_watches(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.readable_watches)
    }

    // ----- driving the loop --------------------------------------------------

    /// Runs until a shutdown (signal, control request or
    /// [`request_shutdown`](Self::request_shutdown)) has stopped every service.
    pub fn run(&mut self) -> Shutdown {
        loop {
            if let Some(kind) = self.step(Duration::from_secs(60)) {
                return kind;
            }
        }
    }

    /// Like [`run`](Self::run), but returns `None` at `deadline`.
    pub fn run_until(&mut self, deadline: Instant) -> Option<Shutdown> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if let Some(kind) = self.step(deadline - now) {
                return Some(kind);
            }
        }
    }

    /// One bounded iteration: handle due timers, wait at most `max_wait` for
    /// file descriptors (less if a timer is due sooner), handle what is ready.
    /// Returns the shutdown kind once a shutdown has completed.
    pub fn step(&mut self, max_wait: Duration) -> Option<Shutdown> {
        if self.finished {
            return self.shutdown;
        }
        let now = Instant::now();
        self.tick(now);
        if self.check_finished() {
            return self.shutdown;
        }
        let timeout = match self.next_deadline(now) {
            Some(t) => t.saturating_duration_since(now).min(max_wait),
            None => max_wait,
        };
        self.poll_once(timeout);
        self.tick(Instant::now());
        if self.check_finished() {
            return self.shutdown;
        }
        None
    }

    // ----- internals: bookkeeping --------------------------------------------

    fn lookup(&self, name: &str) -> Result<usize, Error> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownService(name.to_string()))
    }

    fn status_of(&self, i: usize) -> ServiceStatus {
        let s = &self.services[i];
        let now = Instant::now();
        ServiceStatus {
            name: s.def.name.clone(),
            description: s.def.description.clone(),
            state: s.state,
            pid: s.proc.as_ref().map(|p| p.pid.as_raw_nonzero().get()),
            restarts: s.restarts,
            ready: s.state == ServiceState::Ready,
            last_exit: s.last_exit,
            last_error: s.last_error.clone(),
            since_unix_ms: s.since_unix_ms,
            started_unix_ms: s.started_unix_ms,
            next_restart_in: s.next_restart.map(|t| t.saturating_duration_since(now)),
        }
    }

    fn record(
        &mut self,
        svc: Option<usize>,
        from: Option<ServiceState>,
        to: Option<ServiceState>,
        message: String,
    ) {
        let event = Event {
            seq: self.next_seq,
            at: Instant::now(),
            time_unix_ms: now_unix_ms(),
            service: svc.map(|i| self.services[i].def.name.clone()),
            from,
            to,
            message,
        };
        self.next_seq += 1;
        while self.events.len() >= self.max_events {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn set_state(&mut self, i: usize, new: ServiceState, message: String) {
        let s = &mut self.services[i];
        let old = s.state;
        if old == new {
            return;
        }
        s.state = new;
        s.since_unix_ms = now_unix_ms();
        // PID 1's log is the console: one line a person can read per change.
        let line = state_line(&s.def.name, old, new, &message);
        if matches!(new, ServiceState::Failed | ServiceState::CrashLoop { .. }) {
            warn!("{line}");
        } else {
            info!("{line}");
        }
        self.record(Some(i), Some(old), Some(new), message);
    }

    fn reset_to_waiting(&mut self, i: usize, why: &str) {
        let s = &mut self.services[i];
        s.next_restart = None;
        s.consecutive_failures = 0;
        s.restart_history.clear();
        s.cond_next_check = None;
        self.set_state(i, ServiceState::Waiting, why.to_string());
    }

    fn dep_satisfied(&self, d: usize) -> bool {
        matches!(
            self.services[d].state,
            ServiceState::Ready | ServiceState::Exited(ExitStatus::Code(0))
        )
    }

    fn check_finished(&mut self) -> bool {
        if self.shutdown.is_none() || self.services.iter().any(|s| s.proc.is_some()) {
            return false;
        }
        let now = Instant::now();
        for k in 0..self.order.len() {
            self.tick_stop(self.order[k], now);
        }
        self.record(None, None, None, "all services stopped".into());
        info!("all services stopped");
        // Best effort: let pending responses (e.g. to the shutdown request) out.
        for conn in self.conns.iter_mut().flatten() {
            conn.flush(now);
        }
        self.finished = true;
        true
    }

    // ----- internals: timers and state machine ------------------------------

    fn tick(&mut self, now: Instant) {
        if self.shutdown.is_none() {
            for k in 0..self.order.len() {
                self.tick_start(self.order[k], now);
            }
        }
        for k in (0..self.order.len()).rev() {
            self.tick_stop(self.order[k], now);
        }
        for slot in &mut self.conns {
            if slot
                .as_ref()
                .is_some_and(|c| c.expired(now, self.client_idle_timeout))
            {
                debug!("closing idle control connection");
                *slot = None;
            }
        }
        if self.reap_orphans
            && (self.reap_pending || now.saturating_duration_since(self.last_reap) >= REAP_INTERVAL)
        {
            self.reap(now);
        }
    }

    fn tick_start(&mut self, i: usize, now: Instant) {
        let s = &self.services[i];
        if !s.enabled || s.proc.is_some() {
            return;
        }
        match s.state {
            ServiceState::Waiting => self.try_start(i, now),
            ServiceState::Failed | ServiceState::CrashLoop { .. }
                if s.next_restart.is_some_and(|t| t <= now) =>
            {
                self.services[i].next_restart = None;
                self.try_start(i, now);
            }
            _ => {}
        }
    }

    fn try_start(&mut self, i: usize, now: Instant) {
        if let Some(&d) = self.services[i]
            .deps
            .iter()
            .find(|&&d| !self.dep_satisfied(d))
        {
            let msg = format!("waiting for {}", self.services[d].def.name);
            self.set_waiting(i, msg);
            return;
        }
        let s = &mut self.services[i];
        if !s.def.conditions.is_empty() {
            if s.cond_next_check.is_some_and(|t| now < t) {
                return;
            }
            if let Some(c) = s.def.conditions.iter().find(|c| !c.exists()) {
                let msg = format!("waiting for condition {}", c.display());
                s.cond_next_check = Some(now + self.condition_poll_interval);
                self.set_waiting(i, msg);
                return;
            }
            s.cond_next_check = None;
        }
        self.start_now(i, now);
    }

    /// Enters (or stays in) `Waiting`, reporting the reason once per change.
    fn set_waiting(&mut self, i: usize, reason: String) {
        let s = &mut self.services[i];
        if s.state != ServiceState::Waiting {
            s.wait_reason = reason.clone();
            self.set_state(i, ServiceState::Waiting, reason);
        } else if s.wait_reason != reason {
            s.wait_reason = reason.clone();
            info!(service = %s.def.name, "{reason}");
            self.record(Some(i), None, None, reason);
        }
    }

    fn start_now(&mut self, i: usize, now: Instant) {
        self.services[i].wait_reason.clear();
        self.set_state(
            i,
            ServiceState::Starting,
            format!("starting {}", self.services[i].def.command[0]),
        );
        match self.spawn(i) {
            Ok(proc) => {
                let pid = proc.pid.as_raw_nonzero().get();
                let s = &mut self.services[i];
                s.proc = Some(proc);
                s.generation += 1;
                s.started_at = Some(now);
                s.started_unix_ms = Some(now_unix_ms());
                s.last_error = None;
                s.splitter = LineSplitter::new(self.log.max_line_bytes);
                if s.def.notify_ready {
                    self.set_state(
                        i,
                        ServiceState::Running,
                        format!("pid {pid}, waiting for READY=1"),
                    );
                } else {
                    self.set_state(i, ServiceState::Ready, format!("pid {pid}"));
                }
            }
            Err(e) => {
                warn!(service = %self.services[i].def.name, "{e}");
                self.services[i].last_error = Some(e.clone());
                if self.services[i].def.restart == RestartPolicy::Never {
                    self.set_state(i, ServiceState::Failed, e);
                } else {
                    self.schedule_restart(i, now, e);
                }
            }
        }
    }

    fn schedule_restart(&mut self, i: usize, now: Instant, why: String) {
        let s = &mut self.services[i];
        s.restarts = s.restarts.saturating_add(1);
        let window = s.def.crash_loop_window;
        let limit = s.def.crash_loop_restarts as usize;
        s.restart_history.push_back(now);
        while s
            .restart_history
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > window)
        {
            s.restart_history.pop_front();
        }
        while s.restart_history.len() > limit + 1 {
            s.restart_history.pop_front();
        }
        let crash_loop = s.restart_history.len() > limit;
        let delay = if crash_loop {
            s.def.restart_delay_max
        } else {
            let factor = 1u32 << s.consecutive_failures.min(30);
            s.def
                .restart_delay
                .saturating_mul(factor)
                .min(s.def.restart_delay_max)
        };
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        let next = now + delay;
        s.next_restart = Some(next);
        let msg = format!("{why}; restart #{} in {} ms", s.restarts, delay.as_millis());
        let state = if crash_loop {
            ServiceState::CrashLoop { next_restart: next }
        } else {
            ServiceState::Failed
        };
        self.set_state(i, state, msg);
    }

    fn tick_stop(&mut self, i: usize, now: Instant) {
        let s = &mut self.services[i];
        let Some(proc) = s.proc.as_ref() else {
            if !s.enabled && s.state != ServiceState::Stopped {
                s.next_restart = None;
                s.cond_next_check = None;
                self.set_state(i, ServiceState::Stopped, "stopped".into());
            }
            return;
        };
        if s.state == ServiceState::Stopping {
            let Some(mut timer) = s.stop else { return };
            match timer.give_up_at {
                Some(g) if now >= g => self.abandon(i),
                Some(_) => {}
                None if now >= timer.kill_at => {
                    signal_proc(proc, Signal::KILL);
                    timer.give_up_at = Some(now + self.kill_grace);
                    s.stop = Some(timer);
                    let msg = format!(
                        "did not stop within {} ms, sent SIGKILL",
                        s.def.stop_timeout.as_millis()
                    );
                    warn!(service = %s.def.name, "{msg}");
                    self.record(Some(i), None, None, msg);
                }
                None => {}
            }
            return;
        }
        let (restart_requested, enabled) = (s.restart_requested, s.enabled);
        if restart_requested {
            self.begin_stop(i, now, "restart requested");
        } else if !enabled
            && !self.services[i]
                .dependents
                .iter()
                .any(|&d| self.services[d].proc.is_some())
        {
            let why = if self.shutdown.is_some() {
                "shutdown"
            } else {
                "stop requested"
            };
            self.begin_stop(i, now, why);
        }
    }

    fn begin_stop(&mut self, i: usize, now: Instant, why: &str) {
        let s = &mut self.services[i];
        let Some(proc) = s.proc.as_ref() else { return };
        signal_proc(proc, Signal::TERM);
        s.stop = Some(StopTimer {
            kill_at: now + s.def.stop_timeout,
            give_up_at: None,
        });
        let msg = format!(
            "{why}: sent SIGTERM to pid {}",
            proc.pid.as_raw_nonzero().get()
        );
        self.set_state(i, ServiceState::Stopping, msg);
    }

    fn abandon(&mut self, i: usize) {
        let s = &mut self.services[i];
        let Some(proc) = s.proc.take() else { return };
        s.stop = None;
        let msg = format!(
            "pid {} did not exit after SIGKILL; no longer waiting for it",
            proc.pid.as_raw_nonzero().get()
        );
        s.last_error = Some(msg.clone());
        warn!(service = %s.def.name, "{msg}");
        let next = if s.restart_requested && s.enabled {
            s.restart_requested = false;
            ServiceState::Waiting
        } else {
            ServiceState::Stopped
        };
        self.set_state(i, next, msg);
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if self.reap_pending {
            return Some(now);
        }
        let mut best: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if best.is_none_or(|b| t < b) {
                best = Some(t);
            }
        };
        for s in &self.services {
            if s.enabled && self.shutdown.is_none() {
                if let Some(t) = s.next_restart {
                    consider(t);
                }
                if s.state == ServiceState::Waiting
                    && let Some(t) = s.cond_next_check
                {
                    consider(t);
                }
            }
            if let Some(st) = s.stop {
                consider(st.give_up_at.unwrap_or(st.kill_at));
            }
        }
        for c in self.conns.iter().flatten() {
            consider(c.deadline(self.client_idle_timeout));
        }
        if self.reap_orphans {
            consider(self.last_reap + REAP_INTERVAL);
        }
        best
    }

    // ----- internals: processes ---------------------------------------------

    /// Spawns with `posix_spawn` (no unsafe, no `pre_exec`): own process
    /// group, empty signal mask and default dispositions (PID 1 blocks signals
    /// and the mask would be inherited otherwise), stdin `/dev/null`,
    /// stdout+stderr one pipe, readiness pipe at fd 3, no other fds.
    fn spawn(&mut self, i: usize) -> Result<Proc, String> {
        let def = &self.services[i].def;
        let program = &def.command[0];
        let err = |what: &str, e: &dyn fmt::Display| format!("cannot spawn {program}: {what}: {e}");
        let cstr = |s: String| CString::new(s).map_err(|e| err("argument", &e));

        let argv = def
            .command
            .iter()
            .cloned()
            .map(cstr)
            .collect::<Result<Vec<_>, _>>()?;
        let mut env: BTreeMap<&str, String> = BTreeMap::new();
        env.insert("PATH", DEFAULT_PATH.to_string());
        for (k, v) in &def.env {
            env.insert(k, v.clone());
        }
        if def.notify_ready {
            env.insert(READY_FD_ENV, CHILD_READY_FD.to_string());
        }
        let envp = env
            .into_iter()
            .map(|(k, v)| cstr(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;

        // Every fd handed to the child is first moved to >= 10, so that the
        // dup2 actions onto 0..=3 can never clobber one another.
        let high =
            |fd: OwnedFd| rustix::io::fcntl_dupfd_cloexec(&fd, 10).map_err(|e| err("dup", &e));
        let devnull = std::fs::File::open("/dev/null").map_err(|e| err("/dev/null", &e))?;
        let devnull = high(OwnedFd::from(devnull))?;
        let (log_r, log_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| err("pipe", &e))?;
        set_nonblocking(&log_r).map_err(|e| err("pipe", &e))?;
        let log_w = high(log_w)?;
        let ready = if def.notify_ready {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| err("pipe", &e))?;
            set_nonblocking(&r).map_err(|e| err("pipe", &e))?;
            Some((r, high(w)?))
        } else {
            None
        };

        let mut actions = PosixSpawnFileActions::init().map_err(|e| err("posix_spawn", &e))?;
        let mut dup = |from: &OwnedFd, to: i32| {
            actions
                .add_dup2(from.as_raw_fd(), to)
                .map_err(|e| err("posix_spawn", &e))
        };
        dup(&devnull, 0)?;
        dup(&log_w, 1)?;
        dup(&log_w, 2)?;
        if let Some((_, w)) = &ready {
            dup(w, CHILD_READY_FD)?;
        }
        // Close everything else in the child, including fds this process
        // inherited without close-on-exec (there is no safe close_range).
        for fd in open_fds() {
            if fd > CHILD_READY_FD {
                actions.add_close(fd).map_err(|e| err("posix_spawn", &e))?;
            }
        }
        let mut attr = PosixSpawnAttr::init().map_err(|e| err("posix_spawn", &e))?;
        let mut defaults = SigSet::empty();
        for sig in NixSignal::iterator() {
            if !matches!(sig, NixSignal::SIGKILL | NixSignal::SIGSTOP) {
                defaults.add(sig);
            }
        }
        attr.set_sigmask(&SigSet::empty())
            .and_then(|()| attr.set_sigdefault(&defaults))
            .and_then(|()| attr.set_pgroup(NixPid::from_raw(0)))
            .and_then(|()| {
                attr.set_flags(
                    PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
                        | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF
                        | PosixSpawnFlags::POSIX_SPAWN_SETPGROUP,
                )
            })
            .map_err(|e| err("posix_spawn", &e))?;

        let pid = nix::spawn::posix_spawn(program.as_str(), &actions, &attr, &argv, &envp)
            .map_err(|e| format!("cannot spawn {program}: {e}"))?;
        // The parent's copies of the child's ends close here, so EOF on a pipe
        // means the child side (and anything it passed them to) is gone.
        drop((devnull, log_w));
        let ready_r = ready.map(|(r, _w)| r);
        let pid = Pid::from_raw(pid.as_raw())
            .ok_or_else(|| format!("cannot spawn {program}: bad pid"))?;
        if let Some(nice) = def.nice
            && let Err(e) = rustix::process::setpriority_process(Some(pid), nice)
        {
            // Still supervised; it only runs at PID 1's priority.
            tracing::warn!(service = %def.name, "cannot set niceness {nice}: {e}");
        }
        match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(pidfd) => Ok(Proc {
                pid,
                pidfd,
                log_fd: Some(log_r),
                ready_fd: ready_r,
                ready_buf: Vec::new(),
            }),
            Err(e) => {
                // Cannot supervise it without a pidfd: do not leave it behind.
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                Err(err("pidfd_open", &e))
            }
        }
    }

    /// If the service's process has exited: kill what is left of its process
    /// group (while the zombie still reserves the pgid), reap it, handle it.
    fn check_exit(&mut self, i: usize, now: Instant) {
        let Some(proc) = self.services[i].proc.as_ref() else {
            return;
        };
        let peek = rustix::process::waitid(
            rustix::process::WaitId::PidFd(proc.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        );
        match peek {
            Ok(Some(_)) => {
                let _ = rustix::process::kill_process_group(proc.pid, Signal::KILL);
                let status = match rustix::process::waitid(
                    rustix::process::WaitId::PidFd(proc.pidfd.as_fd()),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
                ) {
                    Ok(Some(st)) => exit_status_from_waitid(&st),
                    _ => ExitStatus::Code(-1),
                };
                self.on_exit(i, status, now);
            }
            Ok(None) => {}
            Err(Errno::CHILD) => {
                // Reaped by someone else; nothing more to learn about it.
                self.services[i].last_error = Some("exit status lost (reaped elsewhere)".into());
                self.on_exit(i, ExitStatus::Code(-1), now);
            }
            Err(Errno::INTR) => {}
            Err(e) => warn!(service = %self.services[i].def.name, "waitid: {e}"),
        }
    }

    fn on_exit(&mut self, i: usize, status: ExitStatus, now: Instant) {
        // Capture whatever the process wrote before it died.
        self.read_log(i, now, LOG_READS_ON_EXIT);
        let mut tail = Vec::new();
        self.services[i].splitter.flush(&mut tail);
        self.store_lines(i, tail, now);

        let s = &mut self.services[i];
        let Some(proc) = s.proc.take() else { return };
        s.stop = None;
        s.last_exit = Some(status);
        let msg = format!("pid {} exited ({status})", proc.pid.as_raw_nonzero().get());
        drop(proc);
        if s.started_at
            .is_some_and(|t| now.saturating_duration_since(t) >= self.backoff_reset_after)
        {
            s.consecutive_failures = 0;
            s.restart_history.clear();
        }
        if s.restart_requested && s.enabled && self.shutdown.is_none() {
            s.restart_requested = false;
            self.reset_to_waiting(i, &format!("{msg}; restarting on request"));
            return;
        }
        s.restart_requested = false;
        if !s.enabled || self.shutdown.is_some() {
            self.set_state(i, ServiceState::Stopped, msg);
            return;
        }
        let restart = match s.def.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Never => false,
        };
        if restart {
            self.schedule_restart(i, now, msg);
        } else {
            self.set_state(i, ServiceState::Exited(status), msg);
        }
    }

    /// `waitpid(-1)` pass (with `reap_orphans`): supervised pids go to their
    /// services, everything else is discarded.
    fn reap(&mut self, now: Instant) {
        self.last_reap = now;
        self.reap_pending = false;
        for i in 0..self.services.len() {
            self.check_exit(i, now);
        }
        for _ in 0..MAX_REAP_PER_PASS {
            match rustix::process::wait(WaitOptions::NOHANG | WaitOptions::from_bits_retain(WALL)) {
                Ok(Some((pid, st))) => {
                    let status = exit_status_from_wait(st);
                    let owner = self
                        .services
                        .iter()
                        .position(|s| s.proc.as_ref().is_some_and(|p| p.pid == pid));
                    match owner {
                        Some(i) => self.on_exit(i, status, now),
                        None => debug!(pid = pid.as_raw_nonzero().get(), %status, "reaped orphan"),
                    }
                }
                Ok(None) | Err(Errno::CHILD) => return,
                Err(Errno::INTR) => {}
                Err(e) => {
                    warn!("waitpid(-1): {e}");
                    return;
                }
            }
        }
        self.reap_pending = true;
    }

    // ----- internals: poll ----------------------------------------------------

    fn poll_once(&mut self, timeout: Duration) {
        let mut fired: Vec<(Token, PollFlags)> = Vec::new();
        {
            let mut tokens: Vec<Token> = Vec::new();
            let mut fds: Vec<PollFd<'_>> = Vec::new();
            if let Some(fd) = &self.signal_fd {
                fds.push(PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN));
                tokens.push(Token::Signal);
            }
            let active = self.conns.iter().filter(|c| c.is_some()).count();
            if let Some(l) = &self.listener
                && active < self.conns.len()
            {
                fds.push(PollFd::from_borrowed_fd(l.as_fd(), PollFlags::IN));
                tokens.push(Token::Listener);
            }
            for (id, c) in self.conns.iter().enumerate() {
                let Some(c) = c else { continue };
                let flags = if c.has_pending_write() {
                    PollFlags::OUT
                } else if c.wants_read() {
                    PollFlags::IN
                } else {
                    PollFlags::empty()
                };
                fds.push(PollFd::from_borrowed_fd(c.stream.as_fd(), flags));
                tokens.push(Token::Conn(id));
            }
            for (i, s) in self.services.iter().enumerate() {
                let Some(p) = &s.proc else { continue };
                let g = s.generation;
                fds.push(PollFd::from_borrowed_fd(p.pidfd.as_fd(), PollFlags::IN));
                tokens.push(Token::Exit(i, g));
                if let Some(fd) = &p.log_fd {
                    fds.push(PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN));
                    tokens.push(Token::Log(i, g));
                }
                if let Some(fd) = &p.ready_fd {
                    fds.push(PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN));
                    tokens.push(Token::Ready(i, g));
                }
            }
            for (id, w) in self.watches.iter().enumerate() {
                if let Some(fd) = w {
                    fds.push(PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN));
                    tokens.push(Token::Watch(id));
                }
            }
            let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            });
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) | Err(Errno::INTR) => {}
                Ok(_) => {
                    for (fd, tok) in fds.iter().zip(&tokens) {
                        let r = fd.revents();
                        if !r.is_empty() {
                            fired.push((*tok, r));
                        }
                    }
                }
                Err(e) => {
                    warn!("poll: {e}");
                    // Do not spin if poll keeps failing.
                    std::thread::sleep(timeout.min(Duration::from_millis(100)));
                }
            }
        }
        fired.sort_by_key(|(t, _)| *t);
        let now = Instant::now();
        for (tok, flags) in fired {
            match tok {
                Token::Signal => self.read_signals(now),
                Token::Log(i, g) => {
                    if self.services[i].generation == g {
                        self.read_log(i, now, LOG_READS_PER_WAKE);
                    }
                }
                Token::Ready(i, g) => {
                    if self.services[i].generation == g {
                        self.read_ready(i);
                    }
                }
                Token::Exit(i, g) => {
                    if self.services[i].generation == g {
                        self.check_exit(i, now);
                    }
                }
                Token::Listener => self.accept(now),
                Token::Conn(id) => self.serve_conn(id, flags, now),
                Token::Watch(id) => {
                    if !self.readable_watches.contains(&id) {
                        self.readable_watches.push(id);
                    }
                }
            }
        }
    }

    fn read_signals(&mut self, now: Instant) {
        let Some(fd) = &self.signal_fd else { return };
        let mut buf = [0u8; signals::RECORD_BYTES * 16];
        let mut sigs = Vec::new();
        let mut close = false;
        for _ in 0..MAX_SIGNAL_READS {
            match rustix::io::read(fd, &mut buf[..]) {
                Ok(0) => {
                    close = true;
                    break;
                }
                Ok(n) => sigs.extend(signals::decode_records(&buf[..n])),
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                Err(e) => {
                    warn!("reading the signal fd: {e}");
                    close = true;
                    break;
                }
            }
        }
        if close {
            warn!("signal fd closed; signals are no longer handled");
            self.signal_fd = None;
        }
        for sig in sigs {
            match Signal::from_named_raw(sig) {
                Some(Signal::TERM) => self.request_shutdown(Shutdown::PowerOff),
                Some(Signal::INT) => self.request_shutdown(Shutdown::Reboot),
                Some(Signal::CHILD) => {
                    if self.reap_orphans {
                        self.reap(now);
                    }
                }
                Some(Signal::HUP) => info!("SIGHUP ignored"),
                _ => debug!(signal = sig, "ignoring signal"),
            }
        }
    }

    fn read_log(&mut self, i: usize, now: Instant, max_reads: usize) {
        let mut buf = vec![0u8; LOG_READ_CHUNK];
        let mut lines = Vec::new();
        {
            let s = &mut self.services[i];
            let Some(proc) = s.proc.as_mut() else { return };
            let Some(fd) = proc.log_fd.as_ref() else {
                return;
            };
            let mut eof = false;
            for _ in 0..max_reads {
                match rustix::io::read(fd, &mut buf[..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => s.splitter.feed(&buf[..n], &mut lines),
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => {}
                    Err(e) => {
                        debug!(service = %s.def.name, "log pipe: {e}");
                        eof = true;
                        break;
                    }
                }
            }
            if eof {
                proc.log_fd = None;
                s.splitter.flush(&mut lines);
            }
        }
        self.store_lines(i, lines, now);
    }

    fn store_lines(&mut self, i: usize, lines: Vec<String>, now: Instant) {
        if lines.is_empty() {
            return;
        }
        let ts = now_unix_ms();
        let s = &mut self.services[i];
        let mut file_buf = Vec::new();
        for text in lines {
            if s.def.log_console
                && let Some(console) = self.console.as_mut()
            {
                let line = format!("[{}] {text}\n", s.def.name);
                match console.write_all(line.as_bytes()) {
                    Ok(()) => self.console_failing = false,
                    Err(e) if !self.console_failing => {
                        self.console_failing = true;
                        warn!("console write failed: {e}");
                    }
                    Err(_) => {}
                }
            }
            if s.file.is_some() {
                file_buf.extend_from_slice(rfc3339_ms(ts).as_bytes());
                file_buf.push(b' ');
                file_buf.extend_from_slice(text.as_bytes());
                file_buf.push(b'\n');
            }
            s.ring.push(LogLine {
                time_unix_ms: ts,
                text,
            });
        }
        if let Some(console) = self.console.as_mut() {
            let _ = console.flush();
        }
        let Some(file) = s.file.as_mut() else { return };
        match file.write(&file_buf, &self.log, now) {
            Ok(true) => {
                if s.file_failing {
                    s.file_failing = false;
                    let msg = format!("writing {} again", file.path().display());
                    info!(service = %s.def.name, "{msg}");
                    self.record(Some(i), None, None, msg);
                }
            }
            Ok(false) => {}
            Err(e) => {
                if !s.file_failing {
                    s.file_failing = true;
                    let msg = format!(
                        "cannot write {}: {e}; keeping logs in memory only, retrying every {} ms",
                        file.path().display(),
                        self.log.dir_retry.as_millis()
                    );
                    warn!(service = %s.def.name, "{msg}");
                    self.record(Some(i), None, None, msg);
                }
            }
        }
    }

    fn read_ready(&mut self, i: usize) {
        let mut got_ready = false;
        {
            let s = &mut self.services[i];
            let Some(proc) = s.proc.as_mut() else { return };
            let Some(fd) = proc.ready_fd.as_ref() else {
                return;
            };
            let mut buf = [0u8; 128];
            let mut eof = false;
            for _ in 0..4 {
                match rustix::io::read(fd, &mut buf[..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        proc.ready_buf.extend_from_slice(&buf[..n]);
                        while let Some(p) = proc.ready_buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = proc.ready_buf.drain(..=p).collect();
                            if line.trim_ascii() == b"READY=1" {
                                got_ready = true;
                            }
                        }
                        if proc.ready_buf.len() > MAX_READY_BUF {
                            proc.ready_buf.clear();
                        }
                    }
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => {}
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            if eof {
                if proc.ready_buf.trim_ascii() == b"READY=1" {
                    got_ready = true;
                }
                proc.ready_fd = None;
            }
        }
        if got_ready && self.services[i].state == ServiceState::Running {
            self.set_state(i, ServiceState::Ready, "READY=1".into());
        }
    }

    // ----- internals: control socket -----------------------------------------

    fn accept(&mut self, now: Instant) {
        for _ in 0..MAX_ACCEPT_PER_WAKE {
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                return;
            };
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.conns[slot] = Some(Conn::new(stream, now));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("control socket accept: {e}");
                    return;
                }
            }
        }
    }

    fn serve_conn(&mut self, id: usize, flags: PollFlags, now: Instant) {
        let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) else {
            return;
        };
        if flags.intersects(PollFlags::ERR | PollFlags::NVAL) {
            conn.mark_broken();
        }
        if flags.intersects(PollFlags::OUT) {
            conn.flush(now);
        }
        if flags.intersects(PollFlags::IN | PollFlags::HUP) && conn.wants_read() {
            conn.read_some(now);
        }
        for _ in 0..MAX_REQUESTS_PER_WAKE {
            match conn.next_line() {
                Some(Line::Request(line)) => {
                    let resp = self.handle_line(&line);
                    conn.queue(&resp, false);
                    conn.flush(now);
                }
                Some(Line::TooLarge) => {
                    conn.queue(&Response::error("request too large"), true);
                    conn.flush(now);
                }
                None => break,
            }
        }
        if !conn.finished() {
            self.conns[id] = Some(conn);
        }
    }

    fn handle_line(&mut self, line: &[u8]) -> Response {
        match serde_json::from_slice::<Request>(line) {
            Ok(req) => self.handle_request(req),
            Err(e) => Response::error(format!("invalid request: {e}")),
        }
    }

    /// Answers one control request (the socket server uses this; it is public
    /// so a caller may serve requests arriving by other means).
    pub fn handle_request(&mut self, req: Request) -> Response {
        debug!(?req, "control request");
        let done = |r: Result<(), Error>| match r {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(e.to_string()),
        };
        match req {
            Request::List => Response {
                services: Some(self.services().into_iter().map(service_info).collect()),
                ..Response::ok()
            },
            Request::Events { since } => Response {
                events: Some(
                    self.events_since(since)
                        .into_iter()
                        .map(event_info)
                        .collect(),
                ),
                last_seq: Some(self.last_seq()),
                ..Response::ok()
            },
            Request::Logs { service, tail } => {
                let n = tail.unwrap_or(DEFAULT_LOG_TAIL).min(MAX_LOG_TAIL);
                match self.logs(&service, n) {
                    Some(lines) => Response {
                        lines: Some(lines),
                        ..Response::ok()
                    },
                    None => Response::error(Error::UnknownService(service).to_string()),
                }
            }
            Request::Start { service } => done(self.start(&service)),
            Request::Stop { service } => done(self.stop(&service)),
            Request::Restart { service } => done(self.restart(&service)),
            Request::Reload { service } => done(self.reload(&service)),
            Request::Shutdown { kind } => {
                self.request_shutdown(kind);
                Response::ok()
            }
            Request::Note { mut message } => {
                if message.len() > MAX_NOTE_BYTES {
                    let mut end = MAX_NOTE_BYTES;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                }
                info!("{message}");
                self.record(None, None, None, message);
                Response::ok()
            }
        }
    }
}

/// Longest message a `note` request keeps.
const MAX_NOTE_BYTES: usize = 1024;

fn shutdown_name(kind: Shutdown) -> &'static str {
    match kind {
        Shutdown::PowerOff => "poweroff",
        Shutdown::Reboot => "reboot",
    }
}

fn service_info(s: ServiceStatus) -> ServiceInfo {
    ServiceInfo {
        name: s.name,
        description: s.description,
        state: s.state.name().to_string(),
        pid: s.pid,
        restarts: s.restarts,
        ready: s.ready,
        last_exit: s.last_exit,
        last_error: s.last_error,
        since: s.since_unix_ms,
        next_restart_in_ms: s
            .next_restart_in
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

fn event_info(e: Event) -> EventInfo {
    EventInfo {
        seq: e.seq,
        time_unix_ms: e.time_unix_ms,
        service: e.service,
        from: e.from.map(|s| s.name().to_string()),
        to: e.to.map(|s| s.name().to_string()),
        message: e.message,
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Never leave children behind: SIGKILL, then reap within a bound.
        let deadline = Instant::now() + Duration::from_secs(2);
        for s in &mut self.services {
            let Some(proc) = s.proc.take() else { continue };
            signal_proc(&proc, Signal::KILL);
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            });
            let mut fds = [PollFd::new(&proc.pidfd, PollFlags::IN)];
            let _ = rustix::event::poll(&mut fds, Some(&ts));
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(proc.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            );
        }
        if let (Some(_), Some(path)) = (self.listener.take(), self.socket_path.as_ref()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The log (PID 1: console) line for a service's state change:
/// `service apid: running -> ready (READY=1)`.
pub fn state_line(name: &str, old: ServiceState, new: ServiceState, message: &str) -> String {
    if message.is_empty() {
        format!("service {name}: {old} -> {new}")
    } else {
        format!("service {name}: {old} -> {new} ({message})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lines_read_as_one_sentence() {
        assert_eq!(
            state_line(
                "apid",
                ServiceState::Running,
                ServiceState::Ready,
                "READY=1"
            ),
            "service apid: running -> ready (READY=1)"
        );
        assert_eq!(
            state_line("timed", ServiceState::Ready, ServiceState::Failed, ""),
            "service timed: ready -> failed"
        );
        assert!(
            state_line(
                "networkd",
                ServiceState::Failed,
                ServiceState::CrashLoop {
                    next_restart: Instant::now()
                },
                "5 restarts in 60 s"
            )
            .starts_with("service networkd: failed -> crash")
        );
    }
}

//! The single-threaded supervisor: its options, its services' bookkeeping,
//! construction, queries and the event record.
//!
//! The rest is split by purpose, each an `impl Supervisor` block of its own:
//!
//! * [`machine`]: the state machine: start/stop/restart/reload requests,
//!   the timers that drive each service from state to state, exits;
//! * [`spawn`]: spawning, signalling and reaping the services' processes;
//! * [`event_loop`]: `run` / `step`, the one `poll(2)` and the dispatch of
//!   what it reports, the signalfd, caller-watched descriptors;
//! * [`log_pipe`]: reading captured output and storing its lines;
//! * [`readiness`]: the `READY=1` pipe;
//! * [`control_server`]: the control socket's listener, connections and
//!   request handling.
//!
//! Everything runs on the caller's thread: PID 1 stays single-threaded.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, Signal, WaitIdOptions};
use tracing::{info, warn};

use crate::control::Conn;
use crate::def::{ServiceDef, validate_set};
use crate::error::Error;
use crate::logs::{LineSplitter, LogFile, LogOptions, LogRing};
use crate::protocol::{LogLine, Shutdown};
use crate::state::{Event, ExitStatus, ServiceState, ServiceStatus, now_unix_ms};

mod control_server;
mod event_loop;
mod log_pipe;
mod machine;
mod readiness;
mod spawn;

/// How the supervisor runs. `Options::default()` suits tests; PID 1 sets
/// `signal_fd`, `reap_orphans`, `control_socket`, `log.dir` and `console`.
pub struct Options {
    /// Captured-output settings.
    pub log: LogOptions,
    /// Control socket path (on the node `/run/bramble/init.sock`); created with
    /// mode 0600, a stale socket at the path is replaced. A bind failure is
    /// logged and recorded as an event; the supervisor runs on without it.
    pub control_socket: Option<PathBuf>,
    /// A signalfd (see [`crate::signals::block_and_open`]) or any fd yielding 128-byte
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
            match control_server::bind_control_socket(&path) {
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

    // ----- public queries ----------------------------------------------------

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

    /// At most `max` captured lines of a service numbered above `after`,
    /// oldest first, and the number of its newest line (0 before the first):
    /// what a follower asks for with the last number it saw.
    pub fn logs_after(&self, name: &str, after: u64, max: usize) -> Option<(Vec<LogLine>, u64)> {
        self.index.get(name).map(|&i| {
            let ring = &self.services[i].ring;
            (ring.after(after, max), ring.last_seq())
        })
    }

    /// Path of the control socket, if it is listening.
    pub fn control_socket(&self) -> Option<&Path> {
        self.listener.as_ref().and(self.socket_path.as_deref())
    }

    /// The shutdown in progress, if any.
    pub fn shutdown_requested(&self) -> Option<Shutdown> {
        self.shutdown
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
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Never leave children behind: SIGKILL, then reap within a bound.
        let deadline = Instant::now() + Duration::from_secs(2);
        for s in &mut self.services {
            let Some(proc) = s.proc.take() else { continue };
            spawn::signal_proc(&proc, Signal::KILL);
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

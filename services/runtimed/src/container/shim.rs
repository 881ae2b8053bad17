//! The shim: the single-threaded process (`bramble-runtimed shim ...`) that
//! creates one container with libcontainer, is its parent and only reaper,
//! stops it when asked, and leaves an exit report.
//!
//! What libcontainer 0.7 does, which this relies on (read from its source):
//!
//! - `build()` clones an intermediate process (exit signal SIGCHLD), which
//!   enters the namespaces and clones the container's init with
//!   `CLONE_PARENT`: the init is a child of the shim, not of the intermediate,
//!   and inherits the intermediate's exit signal (SIGCHLD). `build()` waits
//!   for the intermediate itself (`waitpid(intermediate)`), so the shim only
//!   ever reaps the init and orphans; that happens after `build()` returns.
//! - `with_detach(true)` only matters for terminals (a detached container
//!   with `process.terminal` needs a console socket); the spec has none.
//! - Without `with_stdin/stdout/stderr`, the init keeps the shim's file
//!   descriptors 0, 1 and 2 (stdin `/dev/null` is swapped for the
//!   container's own `/dev/null`); every other descriptor is closed at exec.
//! - The init inherits the shim's signal mask and ignored signals, and
//!   libcontainer resets neither: the shim's executor unblocks every signal
//!   and restores SIGPIPE's default just before `execve`.
//! - `build()` leaves the init waiting; `start()` lets it execute the
//!   program. On a failed `build()` libcontainer removes the cgroup and the
//!   state directory itself.
//!
//! Protocol with the daemon: stdin `/dev/null`, stdout and stderr the pipes
//! the container writes to; `--started-file` appears (atomically) once the
//! program runs; SIGTERM (or SIGINT) stops the container: the image's stop
//! signal (else SIGTERM) to its init, then SIGKILL to all of its processes
//! after `--grace-secs` (a second SIGTERM changes nothing); `--exit-file`
//! appears (atomically) just before the shim exits, whatever happened, at
//! most `grace + 8 s` after the stop request. The shim also gets SIGTERM if the daemon
//! dies (`PR_SET_PDEATHSIG`), so no container outlives its daemon.

use std::ffi::OsString;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::chain;
use super::{ContainerError, STOP_SIGNAL_ANNOTATION, cgroup, devices, seccomp, sys};

/// How long the init may take to die after SIGKILL before the shim gives up
/// (it only takes longer when stuck in the kernel). With the clean-up's own
/// bounds, the shim ends at most `grace + 8 s` after it is asked to stop.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long removing the cgroup may take once the container is dead.
const CLEANUP_WAIT: Duration = Duration::from_secs(1);

/// How long cleaning a leftover cgroup may take.
const STALE_WAIT: Duration = Duration::from_secs(5);

/// Command line of `bramble-runtimed shim`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ShimArgs {
    /// Container id: letters, digits and `_ + - .` (libcontainer's rule).
    #[arg(long, value_name = "ID")]
    pub id: String,
    /// Bundle directory holding `config.json` and the mounted `rootfs/`.
    #[arg(long, value_name = "DIR")]
    pub bundle: PathBuf,
    /// libcontainer's state directory (one subdirectory per container).
    #[arg(long, value_name = "DIR")]
    pub state_root: PathBuf,
    /// Where the exit report (JSON, [`ExitReport`]) is written at the end.
    #[arg(long, value_name = "FILE")]
    pub exit_file: PathBuf,
    /// Where the start report (JSON, [`StartedReport`]) is written once the
    /// container's program runs.
    #[arg(long, value_name = "FILE")]
    pub started_file: PathBuf,
    /// Seconds between the stop signal and SIGKILL.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub grace_secs: u32,
}

impl ShimArgs {
    /// The arguments after `shim`, as the daemon passes them.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            "--id".into(),
            self.id.clone().into(),
            "--bundle".into(),
            self.bundle.clone().into(),
            "--state-root".into(),
            self.state_root.clone().into(),
            "--exit-file".into(),
            self.exit_file.clone().into(),
            "--started-file".into(),
            self.started_file.clone().into(),
            "--grace-secs".into(),
            self.grace_secs.to_string().into(),
        ]
    }
}

/// Written to `--started-file` once the container's program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedReport {
    /// The container init's process id (in the node's PID namespace).
    pub pid: u32,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
}

/// Written to `--exit-file` when the shim ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// The container init's process id, if it was created.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Its exit status, if it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container
    /// (`memory.events` `oom_kill` > 0 when the init had exited).
    #[serde(default)]
    pub oom_killed: bool,
    /// Why the container could not be created, started or supervised
    /// (libcontainer's error text included). Everything it created has been
    /// removed, as far as possible.
    #[serde(default)]
    pub error: Option<String>,
    /// When the shim started, in milliseconds since the Unix epoch: with
    /// `finished_unix_ms`, the whole create, start, wait and delete.
    #[serde(default)]
    pub shim_started_unix_ms: u64,
    /// When the shim finished, in milliseconds since the Unix epoch.
    pub finished_unix_ms: u64,
}

/// Reads an exit report the shim wrote.
pub fn read_exit(path: &Path) -> Result<ExitReport, ContainerError> {
    read_json(path)
}

/// Reads a start report the shim wrote.
pub fn read_started(path: &Path) -> Result<StartedReport, ContainerError> {
    read_json(path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ContainerError> {
    let bytes = fs::read(path).map_err(ContainerError::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| ContainerError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ContainerError> {
    let json = serde_json::to_vec(value).map_err(|e| ContainerError::Parse {
        path: path.to_owned(),
        reason: format!("cannot encode: {e}"),
    })?;
    bramble_atomic::write(path, &json, 0o644)?;
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs the shim: creates, starts and supervises the container, then writes
/// the exit report. Exit status 0 when the container ran (whatever its own
/// exit code), 1 when the report holds an error, 2 when even the report
/// could not be written.
///
/// Must be called while the process is single-threaded (before any async
/// runtime or thread starts). Logs go to stderr (which the container
/// shares) at WARN level when no tracing subscriber is installed.
pub fn run(args: &ShimArgs) -> ExitCode {
    if !tracing::dispatcher::has_been_set() {
        init_logging();
    }
    let shim_started_unix_ms = now_ms();
    let mut report = supervise(args);
    report.shim_started_unix_ms = shim_started_unix_ms;
    report.finished_unix_ms = now_ms();
    if let Some(e) = &report.error {
        tracing::error!(container = %args.id, "{e}");
    }
    match write_json(&args.exit_file, &report) {
        Ok(()) if report.error.is_some() => ExitCode::from(1),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(container = %args.id, "cannot write the exit report: {e}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, which the daemon captures with the container's output:
/// this crate's warnings and errors, libcontainer's errors (its warnings
/// include one on every start about seccomp, which is not built in).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        let ours = meta.target().starts_with(env!("CARGO_CRATE_NAME"));
        let most = if ours {
            tracing::Level::WARN
        } else {
            tracing::Level::ERROR
        };
        *meta.level() <= most
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .without_time();
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::Layer::with_filter(layer, filter))
        .try_init();
}

/// Signals the shim listens to (blocked, read from a signalfd).
fn shim_signals() -> SigSet {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGCHLD);
    mask
}

fn failed(error: impl Into<String>) -> ExitReport {
    ExitReport {
        error: Some(error.into()),
        ..ExitReport::default()
    }
}

fn supervise(args: &ShimArgs) -> ExitReport {
    // Block first, so that SIGTERM from PR_SET_PDEATHSIG queues up.
    let mask = shim_signals();
    if let Err(e) = mask.thread_block() {
        return failed(format!("shim: cannot block signals: {e}"));
    }
    let signals = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    {
        Ok(fd) => fd,
        Err(e) => return failed(format!("shim: cannot create a signalfd: {e}")),
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        return failed(format!("shim: cannot set the parent-death signal: {e}"));
    }
    if nix::unistd::getppid() == Pid::from_raw(1) {
        return failed("shim: the daemon that started it has already exited");
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return failed(format!("shim: cannot become a child subreaper: {e}"));
    }
    match thread_count() {
        Some(n) if n > 1 => {
            return failed(format!(
                "shim: {n} threads; it must run single-threaded (libcontainer forks)"
            ));
        }
        _ => {}
    }

    let Bundle {
        cgroup_dir,
        stop_signal,
        memory_limited,
        own_network,
    } = match Bundle::load(&args.bundle) {
        Ok(b) => b,
        Err(e) => return failed(e),
    };

    let state_dir = args.state_root.join(&args.id);
    remove_leftovers(&state_dir, &cgroup_dir);
    if let Err(e) = fs::create_dir_all(&args.state_root) {
        return failed(format!("cannot create {}: {e}", args.state_root.display()));
    }

    let mut container = match create(args) {
        Ok(c) => c,
        Err(e) => {
            // libcontainer cleans up after a failed create; make sure.
            remove_leftovers(&state_dir, &cgroup_dir);
            reap_all(None, &mut None);
            return failed(e);
        }
    };
    // libcontainer's Pid is nix 0.29's; ours is nix 0.31's.
    let Some(init) = container.pid().map(|p| Pid::from_raw(p.as_raw())) else {
        cleanup(&mut container, &cgroup_dir, None);
        return failed("libcontainer created the container but reported no init pid");
    };
    let pid_u32 = u32::try_from(init.as_raw()).unwrap_or_default();
    let mut report = ExitReport {
        pid: Some(pid_u32),
        ..ExitReport::default()
    };

    if memory_limited && let Err(e) = cgroup::disable_swap(&cgroup_dir) {
        tracing::warn!("cannot keep the container out of swap: {e}");
    }
    // The container's init waits in its cgroup; nothing of the workload has
    // run yet. Without its device policy (and its loopback, when it has a
    // network of its own) it does not start.
    let started = devices::restrict(&cgroup_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            if own_network {
                loopback_up(init)
            } else {
                Ok(())
            }
        })
        .and_then(|()| {
            container
                .start()
                .map_err(|e| format!("starting the container: {}", describe(&e)))
        });
    let started = started.and_then(|()| {
        write_json(
            &args.started_file,
            &StartedReport {
                pid: pid_u32,
                started_unix_ms: now_ms(),
            },
        )
        .map_err(|e| format!("cannot write the start report: {e}"))
    });
    if let Err(e) = started {
        hard_kill(&mut container, init, &cgroup_dir);
        let mut status = None;
        wait_for(init, &mut status, &signals, Instant::now() + KILL_WAIT);
        fill_status(&mut report, status);
        cleanup(&mut container, &cgroup_dir, Some(init));
        report.error = Some(e);
        return report;
    }

    let (status, problem) = wait_for_exit(
        &mut container,
        init,
        &cgroup_dir,
        &signals,
        stop_signal,
        args.grace_secs,
    );
    fill_status(&mut report, status);
    match cgroup::oom_kills(&cgroup_dir) {
        Ok(n) => report.oom_killed = n > 0,
        Err(e) => tracing::warn!("cannot read the OOM kill count: {e}"),
    }
    cleanup(&mut container, &cgroup_dir, Some(init));
    report.error = problem;
    report
}

/// Brings up the loopback link of the network namespace `init` is in (a
/// new namespace's is down, without even 127.0.0.1).
fn loopback_up(init: Pid) -> Result<(), String> {
    /// The kernel gives loopback index 1 in every network namespace.
    const LOOPBACK_INDEX: u32 = 1;
    let path = format!("/proc/{init}/ns/net");
    let ns = fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
    let socket = bramble_netlink::in_namespace(&ns, || {
        bramble_netlink::route_socket().map_err(std::io::Error::other)
    })
    .map_err(|e| format!("cannot enter the container's network namespace: {e}"))?;
    bramble_netlink::set_link_up_blocking(&socket, LOOPBACK_INDEX)
        .map_err(|e| format!("cannot bring up the container's loopback: {e}"))
}

/// What the shim needs from the bundle's `config.json`.
#[derive(Debug, PartialEq, Eq)]
struct Bundle {
    /// The container's cgroup directory.
    cgroup_dir: PathBuf,
    /// What stops it gracefully.
    stop_signal: Signal,
    /// It has a memory limit.
    memory_limited: bool,
    /// It gets a network namespace of its own (whose loopback the shim
    /// brings up).
    own_network: bool,
}

impl Bundle {
    fn load(bundle: &Path) -> Result<Self, String> {
        let config_path = bundle.join("config.json");
        let spec = Spec::load(&config_path)
            .map_err(|e| format!("cannot load {}: {}", config_path.display(), oci_error(&e)))?;
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .ok_or_else(|| format!("{} has no linux.cgroupsPath", config_path.display()))?;
        let stop_signal = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(STOP_SIGNAL_ANNOTATION))
            .and_then(|s| super::parse_signal(s))
            .unwrap_or(Signal::SIGTERM);
        let memory_limited = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .is_some_and(|l| l > 0);
        let own_network = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
            });
        Ok(Self {
            cgroup_dir: cgroup::cgroup_dir(&cgroups_path),
            stop_signal,
            memory_limited,
            own_network,
        })
    }
}

/// An oci-spec error with its cause (its `Io` variant's text hides it).
fn oci_error(e: &oci_spec::OciSpecError) -> String {
    match e {
        oci_spec::OciSpecError::Io(io) => io.to_string(),
        other => chain(other),
    }
}

fn fill_status(report: &mut ExitReport, status: Option<WaitStatus>) {
    match status {
        Some(WaitStatus::Exited(_, code)) => report.exit_code = Some(code),
        Some(WaitStatus::Signaled(_, sig, _)) => report.signal = Some(sig as i32),
        _ => {}
    }
}

/// The number of threads of this process, from `/proc/self/status`.
fn thread_count() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// libcontainer's error with the detail its `Display` leaves out.
fn describe(e: &libcontainer::error::LibcontainerError) -> String {
    use libcontainer::error::LibcontainerError as L;
    match e {
        L::InvalidInput(detail) => format!("invalid input: {detail}"),
        other => chain(other),
    }
}

fn create(args: &ShimArgs) -> Result<Container, String> {
    let builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_executor(InitExecutor)
        .validate_id()
        .map_err(|e| format!("container id {:?}: {}", args.id, describe(&e)))?
        .with_root_path(&args.state_root)
        .map_err(|e| format!("state root {}: {}", args.state_root.display(), describe(&e)))?;
    builder
        .as_init(&args.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating the container: {}", describe(&e)))
}

/// Removes what a previous run for this id left behind (a crashed shim):
/// libcontainer's state directory (killing what is left of that container)
/// and the container's cgroup.
fn remove_leftovers(state_dir: &Path, cgroup_dir: &Path) {
    if state_dir.exists() {
        tracing::warn!(state = %state_dir.display(), "removing a leftover container state");
        let deleted = Container::load(state_dir.to_owned()).and_then(|mut c| c.delete(true));
        if let Err(e) = deleted {
            tracing::warn!(
                "libcontainer could not delete the leftover container: {}",
                describe(&e)
            );
        }
        if state_dir.exists()
            && let Err(e) = fs::remove_dir_all(state_dir)
        {
            tracing::warn!(state = %state_dir.display(), "cannot remove the leftover state: {e}");
        }
    }
    if let Err(e) = cgroup::remove_stale(cgroup_dir, STALE_WAIT) {
        tracing::warn!("{e}");
    }
}

/// Sends `sig` through libcontainer (to the init, or with `all` to every
/// process of the container's cgroup), falling back to `kill(init)`.
fn signal_container(container: &mut Container, init: Pid, sig: Signal, all: bool) {
    // libcontainer uses nix 0.29's Signal; go through the number.
    let result = libcontainer::signal::Signal::try_from(sig as i32)
        .map_err(|e| e.to_string())
        .and_then(|s| container.kill(s, all).map_err(|e| describe(&e)));
    if let Err(e) = result {
        tracing::warn!(
            pid = init.as_raw(),
            "cannot send {sig} through libcontainer: {e}"
        );
        let _ = kill(init, sig);
    }
}

/// SIGKILL to every process of the container: its cgroup at once
/// (`cgroup.kill`), else through libcontainer (which freezes the cgroup and
/// walks its processes), and its init in any case (the kernel then kills
/// the rest of its PID namespace).
fn hard_kill(container: &mut Container, init: Pid, cgroup_dir: &Path) {
    if let Err(e) = cgroup::kill_all(cgroup_dir) {
        tracing::warn!(cgroup = %cgroup_dir.display(), "cannot write cgroup.kill: {e}");
        signal_container(container, init, Signal::SIGKILL, true);
    }
    let _ = kill(init, Signal::SIGKILL);
}

/// Waits for the init to exit, stopping it on SIGTERM/SIGINT.
/// Returns its wait status and, if supervision failed, why.
fn wait_for_exit(
    container: &mut Container,
    init: Pid,
    cgroup_dir: &Path,
    signals: &SignalFd,
    stop_signal: Signal,
    grace_secs: u32,
) -> (Option<WaitStatus>, Option<String>) {
    enum Phase {
        Running,
        Stopping { kill_at: Instant },
        Killed { give_up_at: Instant },
    }
    let mut phase = Phase::Running;
    let mut status = None;
    loop {
        reap_all(Some(init), &mut status);
        if status.is_some() {
            return (status, None);
        }
        let now = Instant::now();
        match phase {
            Phase::Stopping { kill_at } if now >= kill_at => {
                tracing::warn!(
                    pid = init.as_raw(),
                    grace_secs,
                    "the container did not stop in time; SIGKILL"
                );
                hard_kill(container, init, cgroup_dir);
                phase = Phase::Killed {
                    give_up_at: now + KILL_WAIT,
                };
                continue;
            }
            Phase::Killed { give_up_at } if now >= give_up_at => {
                return (
                    None,
                    Some(format!(
                        "the container's init (pid {init}) did not exit {} s after SIGKILL \
                         (stuck in the kernel, for example on a hung mount); its cgroup may remain",
                        KILL_WAIT.as_secs()
                    )),
                );
            }
            _ => {}
        }
        let timeout = match phase {
            Phase::Running => PollTimeout::NONE,
            Phase::Stopping { kill_at: until } | Phase::Killed { give_up_at: until } => {
                poll_timeout(until.saturating_duration_since(now))
            }
        };
        if let Err(e) = wait_readable(signals, timeout) {
            return (None, Some(format!("shim: waiting for signals: {e}")));
        }
        for sig in drain(signals) {
            if matches!(sig, Signal::SIGTERM | Signal::SIGINT) && matches!(phase, Phase::Running) {
                tracing::info!(pid = init.as_raw(), signal = %sig, "stopping the container with {stop_signal}");
                signal_container(container, init, stop_signal, false);
                let grace = Duration::from_secs(u64::from(grace_secs));
                phase = Phase::Stopping {
                    kill_at: Instant::now()
                        .checked_add(grace)
                        .unwrap_or_else(|| Instant::now() + KILL_WAIT),
                };
            }
        }
    }
}

/// Waits (reaping) until `init` has exited or `deadline` passes, ignoring
/// stop requests (used when the container is already being killed).
fn wait_for(init: Pid, status: &mut Option<WaitStatus>, signals: &SignalFd, deadline: Instant) {
    loop {
        reap_all(Some(init), status);
        let now = Instant::now();
        if status.is_some() || now >= deadline {
            return;
        }
        if wait_readable(signals, poll_timeout(deadline - now)).is_err() {
            return;
        }
        drain(signals);
    }
}

/// A poll timeout for `d`, rounded up to whole milliseconds.
fn poll_timeout(d: Duration) -> PollTimeout {
    let ms = d.as_micros().div_ceil(1000);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

fn wait_readable(signals: &SignalFd, timeout: PollTimeout) -> nix::Result<()> {
    let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every signal queued on the signalfd.
fn drain(signals: &SignalFd) -> Vec<Signal> {
    let mut got = Vec::new();
    loop {
        match signals.read_signal() {
            Ok(Some(info)) => {
                if let Ok(sig) = i32::try_from(info.ssi_signo)
                    .map_err(|_| Errno::EINVAL)
                    .and_then(Signal::try_from)
                {
                    got.push(sig);
                }
            }
            Ok(None) => return got,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("reading the signalfd: {e}");
                return got;
            }
        }
    }
}

/// Reaps every child that has ended (the only place the shim reaps),
/// recording `init`'s status.
fn reap_all(init: Option<Pid>, status: &mut Option<WaitStatus>) {
    loop {
        match waitpid(
            None::<Pid>,
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(ws @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                if init.is_some() && ws.pid() == init {
                    *status = Some(ws);
                }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!("waitpid: {e}");
                return;
            }
        }
    }
}

/// Deletes the container (SIGKILL to what is left, cgroup and state
/// removed) and reaps what that killed. Failures are logged: the next shim
/// for the same id removes leftovers.
fn cleanup(container: &mut Container, cgroup_dir: &Path, init: Option<Pid>) {
    let mut status = None;
    let mut attempt = 0;
    loop {
        reap_all(init, &mut status);
        match container.delete(true) {
            Ok(()) => break,
            Err(e) if attempt >= 3 => {
                tracing::warn!("cannot delete the container: {}", describe(&e));
                if let Err(e) = cgroup::remove_stale(cgroup_dir, CLEANUP_WAIT) {
                    tracing::warn!("{e}");
                }
                break;
            }
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Orphans re-parented to the shim were killed with the cgroup: reap them.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match waitpid(
            None::<Pid>,
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Err(Errno::ECHILD) => return,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            _ => {}
        }
    }
}

/// libcontainer's default executor, after undoing what the init inherited
/// from the shim: the blocked signals and SIGPIPE ignored.
#[derive(Debug, Clone, Copy)]
struct InitExecutor;

impl Executor for InitExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        SigSet::all()
            .thread_unblock()
            .map_err(|e| ExecutorError::Other(format!("cannot unblock signals: {e}")))?;
        sys::default_sigpipe()
            .map_err(|e| ExecutorError::Other(format!("cannot restore SIGPIPE: {e}")))?;
        // Last, so that nothing of the runtime's own runs under the filter.
        if let Some(programs) = seccomp_programs(spec).map_err(ExecutorError::Other)? {
            seccomp::install(&programs).map_err(ExecutorError::Other)?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// The seccomp programs the spec's profile asks for; `None` when it says
/// unconfined. A spec without the annotation gets the filter.
fn seccomp_programs(spec: &Spec) -> Result<Option<Vec<seccompiler::BpfProgram>>, String> {
    let profile = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(seccomp::ANNOTATION))
        .map_or(seccomp::RUNTIME_DEFAULT, String::as_str);
    match profile {
        seccomp::UNCONFINED => Ok(None),
        seccomp::RUNTIME_DEFAULT => {
            let sys_admin = spec
                .process()
                .as_ref()
                .and_then(|p| p.capabilities().as_ref())
                .and_then(|c| c.bounding().as_ref())
                .is_some_and(|b| b.contains(&oci_spec::runtime::Capability::SysAdmin));
            seccomp::filters(sys_admin).map(Some)
        }
        other => Err(format!("unknown seccomp profile {other:?} in the spec")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        shim: ShimArgs,
    }

    fn sample() -> ShimArgs {
        ShimArgs {
            id: "web".into(),
            bundle: "/run/bramble/runtime/bundles/web".into(),
            state_root: "/run/bramble/runtime/state".into(),
            exit_file: "/run/bramble/runtime/bundles/web/exit.json".into(),
            started_file: "/run/bramble/runtime/bundles/web/started.json".into(),
            grace_secs: 30,
        }
    }

    #[test]
    fn flags_round_trip() {
        let args = sample();
        let mut argv: Vec<OsString> = vec!["shim".into()];
        argv.extend(args.to_args());
        let parsed = Cli::try_parse_from(argv).unwrap();
        assert_eq!(parsed.shim, args);
    }

    #[test]
    fn grace_defaults_to_ten_seconds_and_other_flags_are_required() {
        let parsed = Cli::try_parse_from([
            "shim",
            "--id",
            "a",
            "--bundle",
            "/b",
            "--state-root",
            "/s",
            "--exit-file",
            "/e",
            "--started-file",
            "/t",
        ])
        .unwrap();
        assert_eq!(parsed.shim.grace_secs, 10);
        assert!(Cli::try_parse_from(["shim", "--id", "a"]).is_err());
    }

    #[test]
    fn reports_round_trip_and_tolerate_missing_fields() {
        let dir = tempfile::tempdir().unwrap();
        let exit = ExitReport {
            pid: Some(42),
            exit_code: None,
            signal: Some(9),
            oom_killed: true,
            error: None,
            shim_started_unix_ms: 1_699_999_999_900,
            finished_unix_ms: 1_700_000_000_000,
        };
        let path = dir.path().join("exit.json");
        write_json(&path, &exit).unwrap();
        assert_eq!(read_exit(&path).unwrap(), exit);
        fs::write(
            &path,
            r#"{"error": "creating the container: boom", "finished_unix_ms": 5}"#,
        )
        .unwrap();
        let r = read_exit(&path).unwrap();
        assert_eq!(r.error.as_deref(), Some("creating the container: boom"));
        assert_eq!((r.pid, r.exit_code, r.oom_killed), (None, None, false));

        let started = StartedReport {
            pid: 7,
            started_unix_ms: 9,
        };
        let path = dir.path().join("started.json");
        write_json(&path, &started).unwrap();
        assert_eq!(read_started(&path).unwrap(), started);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            r#"{"pid":7,"started_unix_ms":9}"#
        );
    }

    #[test]
    fn missing_or_garbled_reports_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        let err = read_exit(&path).unwrap_err();
        assert!(err.to_string().contains("exit.json"), "{err}");
        fs::write(&path, "{").unwrap();
        let err = read_started(&path).unwrap_err();
        assert!(err.to_string().contains("exit.json"), "{err}");
    }

    #[test]
    fn poll_timeouts_round_up() {
        assert_eq!(
            poll_timeout(Duration::from_micros(1)),
            PollTimeout::try_from(1u32).unwrap()
        );
        assert_eq!(
            poll_timeout(Duration::from_millis(1500)),
            PollTimeout::try_from(1500u32).unwrap()
        );
        assert_eq!(poll_timeout(Duration::ZERO), PollTimeout::ZERO);
        assert_eq!(
            poll_timeout(Duration::from_secs(u64::MAX / 2)),
            PollTimeout::MAX
        );
    }

    #[test]
    fn bundles_give_the_cgroup_stop_signal_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path();
        let err = Bundle::load(bundle).unwrap_err();
        assert!(
            err.contains("config.json") && err.contains("No such file"),
            "{err}"
        );

        let w: bramble_config::Workload = serde_json::from_value(serde_json::json!({
            "name": "web", "image": "nginx", "command": ["/bin/app"],
            "resources": {"memory": "64Mi"}
        }))
        .unwrap();
        let image = oci_spec::image::ImageConfigurationBuilder::default()
            .config(
                oci_spec::image::ConfigBuilder::default()
                    .stop_signal("SIGQUIT")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let rootfs = bundle.join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        let mut input =
            super::super::SpecInput::new(&w, &image, &rootfs, "/bramble/web".into(), "web".into());
        input.resolv_conf = None;
        input.hosts = None;
        let spec = super::super::build_spec(&input).unwrap();
        super::super::write_config(bundle, &spec).unwrap();
        assert_eq!(
            Bundle::load(bundle).unwrap(),
            Bundle {
                cgroup_dir: "/sys/fs/cgroup/bramble/web".into(),
                stop_signal: Signal::SIGQUIT,
                memory_limited: true,
                own_network: true,
            }
        );

        fs::write(bundle.join("config.json"), r#"{"ociVersion": "1.1.0"}"#).unwrap();
        let err = Bundle::load(bundle).unwrap_err();
        assert!(err.contains("no linux.cgroupsPath"), "{err}");
    }

    #[test]
    fn counts_threads() {
        // The test harness runs tests on threads of its own.
        assert!(thread_count().is_some_and(|n| n >= 2));
    }
}

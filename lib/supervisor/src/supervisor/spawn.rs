//! Service processes: spawned with `posix_spawn`, signalled by process
//! group, their exits read through pidfds (and, for PID 1, `waitpid(-1)`
//! for everything else it inherits).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::unistd::Pid as NixPid;
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitIdOptions, WaitOptions};
use tracing::{debug, warn};

use super::{Proc, Supervisor, set_nonblocking};
use crate::def::{CHILD_READY_FD, DEFAULT_PATH, READY_FD_ENV};
use crate::state::ExitStatus;

/// Children reaped per `waitpid(-1)` pass before yielding to the loop.
const MAX_REAP_PER_PASS: usize = 1024;
/// How often orphans are reaped even without SIGCHLD (with `reap_orphans`).
pub(super) const REAP_INTERVAL: Duration = Duration::from_secs(5);
/// `__WALL`: also reap children that were created with `clone` and a non-SIGCHLD exit signal.
const WALL: u32 = 0x4000_0000;

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

/// Sends `sig` to the service's process group and, if the leader has left
/// that group, to the leader itself through its pidfd.
pub(super) fn signal_proc(proc: &Proc, sig: Signal) {
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

/// Sends `sig` to the service's own process only (through its pidfd), not
/// to its group: a reload is addressed to the daemon, and its children (a
/// container runtime's shims, for one) must not get it.
pub(super) fn signal_leader(proc: &Proc, sig: Signal) {
    if let Err(e) = rustix::process::pidfd_send_signal(&proc.pidfd, sig) {
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
    /// Spawns with `posix_spawn` (no unsafe, no `pre_exec`): own process
    /// group, empty signal mask and default dispositions (PID 1 blocks signals
    /// and the mask would be inherited otherwise), stdin `/dev/null`,
    /// stdout+stderr one pipe, readiness pipe at fd 3, no other fds.
    pub(super) fn spawn(&mut self, i: usize) -> Result<Proc, String> {
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
        if let Some(adj) = def.oom_score_adj {
            let path = format!("/proc/{}/oom_score_adj", pid.as_raw_nonzero());
            if let Err(e) = std::fs::write(&path, adj.to_string()) {
                // Still supervised; only the OOM killer's choice differs.
                tracing::warn!(service = %def.name, "cannot set oom_score_adj {adj}: {e}");
            }
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
    pub(super) fn check_exit(&mut self, i: usize, now: Instant) {
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

    /// `waitpid(-1)` pass (with `reap_orphans`): supervised pids go to their
    /// services, everything else is discarded.
    pub(super) fn reap(&mut self, now: Instant) {
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
}

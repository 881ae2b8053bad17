//! The state machine: what a start, stop, restart, reload or shutdown
//! request sets in motion, the timers that move each service between
//! states (dependencies, conditions, backoff, crash loops, stop timeouts),
//! and what a process exit leads to.

use std::time::Instant;

use rustix::process::Signal;
use tracing::{debug, info, warn};

use super::log_pipe::LOG_READS_ON_EXIT;
use super::spawn::{REAP_INTERVAL, signal_leader, signal_proc};
use super::{StopTimer, Supervisor};
use crate::def::RestartPolicy;
use crate::error::Error;
use crate::logs::LineSplitter;
use crate::protocol::Shutdown;
use crate::state::{ExitStatus, ServiceState, now_unix_ms};

impl Supervisor {
    // ----- requests ----------------------------------------------------------

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
                signal_leader(proc, Signal::HUP);
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

    // ----- transitions -------------------------------------------------------

    pub(super) fn set_state(&mut self, i: usize, new: ServiceState, message: String) {
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

    pub(super) fn reset_to_waiting(&mut self, i: usize, why: &str) {
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

    pub(super) fn check_finished(&mut self) -> bool {
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

    pub(super) fn tick(&mut self, now: Instant) {
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

    pub(super) fn on_exit(&mut self, i: usize, status: ExitStatus, now: Instant) {
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
}

fn shutdown_name(kind: Shutdown) -> &'static str {
    match kind {
        Shutdown::PowerOff => "poweroff",
        Shutdown::Reboot => "reboot",
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

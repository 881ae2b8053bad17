//! The loop: `run` / `step`, one bounded `poll(2)` over every descriptor
//! (signalfd, pidfds, log and readiness pipes, the control socket and its
//! connections, caller-watched descriptors), and the dispatch of what it
//! reports, in an order that captures a dying service's last lines before
//! its exit is handled.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::Signal;
use tracing::{debug, info, warn};

use super::Supervisor;
use super::log_pipe::LOG_READS_PER_WAKE;
use super::spawn::REAP_INTERVAL;
use crate::protocol::Shutdown;
use crate::signals;
use crate::state::ServiceState;

/// Signal reads per wake-up.
const MAX_SIGNAL_READS: usize = 4;

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

impl Supervisor {
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
}

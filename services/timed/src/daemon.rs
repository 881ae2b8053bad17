//! The daemon: restore the saved time, signal readiness, then poll the
//! configured servers for ever, correcting the clock and publishing status.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::clock::{self, Action};
use crate::config::{self, Settings};
use crate::error::{Error, QueryError};
use crate::ntp;
use crate::persist::{self, Saved};
use crate::query::{self, MAX_ADDRS_PER_NAME, Measurement};
use crate::ready;
use crate::status::{self, StateDoc};

/// How the daemon runs (from the command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// The machine configuration file.
    pub config: PathBuf,
    /// Where the saved time lives.
    pub state_dir: PathBuf,
    /// Where `time/state.json` and `time/synced` go.
    pub run_dir: PathBuf,
    /// Whether to touch the system clock.
    pub set_clock: bool,
    /// Shortest poll interval (and longest retry delay before the first sync).
    pub min_poll: Duration,
    /// Longest poll interval (and longest retry delay once synced).
    pub max_poll: Duration,
    /// First retry delay after a failed attempt; doubled per failure.
    pub retry_min: Duration,
    /// Wait for one server's reply (and for one name resolution).
    pub query_timeout: Duration,
    /// How often the current time is saved.
    pub save_interval: Duration,
    /// UDP port of the servers.
    pub port: u16,
    /// The value of `BRAMBLE_READY_FD`, if set.
    pub ready_fd: Option<String>,
}

/// The retry delay after `failures` (>= 1) failed attempts in a row:
/// `retry_min` doubled per failure, capped at `cap`.
pub fn backoff(failures: u32, retry_min: Duration, cap: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(31);
    retry_min
        .checked_mul(1u32 << shift)
        .unwrap_or(cap)
        .min(cap)
        .max(retry_min.min(cap))
}

/// The poll interval after a good sample: back to `min` after a step,
/// otherwise doubled up to `max`.
pub fn next_interval(current: Duration, action: Action, min: Duration, max: Duration) -> Duration {
    if action == Action::Step {
        min
    } else {
        current.saturating_mul(2).clamp(min, max)
    }
}

fn now_ns() -> i128 {
    ntp::unix_nanos(SystemTime::now())
}

fn unix_secs_f64(ns: i128) -> f64 {
    ntp::secs_f64(ns)
}

/// The outcome of one attempt over every server.
#[derive(Debug)]
struct Attempt {
    /// The first good measurement and the server name it came from.
    good: Option<(String, Measurement)>,
    /// Every failure met on the way.
    errors: Vec<QueryError>,
}

struct Daemon {
    opts: Options,
    /// `None` when the configuration could not be read at start: nothing is
    /// queried until a reload succeeds.
    settings: Option<Settings>,
    /// Addresses that sent a DENY or RSTR kiss-o'-death (until reload).
    denied: HashSet<SocketAddr>,
    doc: StateDoc,
    interval: Duration,
    next_poll: Option<Instant>,
    /// The offset not yet applied to the clock (with `--no-set-clock`, the
    /// last one measured), added to the clock when saving the time.
    pending_offset_ns: i128,
}

impl Daemon {
    fn publish(&mut self) {
        self.doc.next_poll_unix = self.next_poll.map(|at| {
            let wait = at.saturating_duration_since(Instant::now());
            unix_secs_f64(now_ns() + wait.as_nanos() as i128)
        });
        if let Err(e) = status::write_state(&self.opts.run_dir, &self.doc) {
            error!("cannot write the time status: {e}");
        }
    }

    fn save_time(&self, why: &str) {
        let estimate = now_ns() + self.pending_offset_ns;
        let saved = Saved::new(estimate, self.doc.synced);
        match persist::save(&self.opts.state_dir, &saved) {
            Ok(()) => debug!("saved the time ({why}): {} s", saved.unix_seconds),
            Err(e) => error!("cannot save the time ({why}): {e}"),
        }
    }

    fn apply_settings(&mut self, settings: Settings) {
        self.doc.disabled = settings.disabled;
        self.doc.servers = settings.servers.clone();
        self.doc.default_servers = settings.default_servers;
        self.doc.config_error = None;
        self.denied.clear();
        self.next_poll = if settings.disabled {
            info!("time synchronisation is disabled (machine.time.disabled)");
            None
        } else {
            info!(
                "time servers: {}{}",
                settings.servers.join(", "),
                if settings.default_servers {
                    " (built-in default)"
                } else {
                    ""
                }
            );
            Some(Instant::now())
        };
        self.settings = Some(settings);
    }

    fn reload(&mut self) {
        match config::load(&self.opts.config) {
            Ok(settings) => {
                info!("configuration reloaded from {}", self.opts.config.display());
                self.apply_settings(settings);
            }
            Err(e) => {
                error!("{e}; keeping the previous time settings");
                self.doc.config_error = Some(e.to_string());
            }
        }
        self.publish();
    }

    async fn attempt(&self, settings: &Settings) -> Attempt {
        let mut errors = Vec::new();
        for name in &settings.servers {
            let addrs = match query::resolve(name, self.opts.port, self.opts.query_timeout).await {
                Ok(a) => a,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            for addr in addrs
                .into_iter()
                .filter(|a| !self.denied.contains(a))
                .take(MAX_ADDRS_PER_NAME)
            {
                match query::query(addr, self.opts.query_timeout).await {
                    Ok(m) => {
                        return Attempt {
                            good: Some((name.clone(), m)),
                            errors,
                        };
                    }
                    Err(e) => {
                        debug!("{name}: {e}");
                        errors.push(e);
                    }
                }
            }
        }
        Attempt { good: None, errors }
    }

    fn on_good(&mut self, server: String, m: Measurement) {
        let offset = m.sample.offset_ns;
        let first = !self.doc.synced;
        let action = clock::decide(offset, first);
        let applied = if self.opts.set_clock {
            let result = match action {
                Action::Step => clock::step_by(offset),
                Action::Slew => clock::slew_by(offset),
                Action::None => Ok(()),
            };
            if let Err(e) = result {
                // Treated as a failed attempt: the clock is not right.
                self.on_failure(
                    vec![],
                    Some(format!("cannot correct the clock: {e}")),
                    false,
                );
                return;
            }
            // A slew is still being absorbed; a step is done.
            self.pending_offset_ns = if action == Action::Slew { offset } else { 0 };
            match action {
                Action::Step => "; clock stepped",
                Action::Slew => "; clock slewing",
                Action::None => "",
            }
        } else {
            self.pending_offset_ns = offset;
            match action {
                Action::Step => "; would step the clock (--no-set-clock)",
                Action::Slew => "; would slew the clock (--no-set-clock)",
                Action::None => "",
            }
        };
        let msg = format!(
            "{} {server} ({}): offset {:+.6} s, delay {:.6} s, stratum {}{applied}",
            if first {
                "synchronised with"
            } else {
                "sample from"
            },
            m.addr,
            ntp::secs_f64(offset),
            ntp::secs_f64(m.sample.delay_ns),
            m.reply.stratum,
        );
        if first || action == Action::Step {
            info!("{msg}");
        } else {
            debug!("{msg}");
        }

        self.interval = if first {
            self.opts.min_poll
        } else {
            next_interval(
                self.interval,
                action,
                self.opts.min_poll,
                self.opts.max_poll,
            )
        };
        self.next_poll = Some(Instant::now() + self.interval);
        let d = &mut self.doc;
        d.synced = true;
        d.server = Some(server);
        d.address = Some(m.addr.to_string());
        d.stratum = Some(m.reply.stratum);
        d.offset_seconds = Some(ntp::secs_f64(offset));
        d.delay_seconds = Some(ntp::secs_f64(m.sample.delay_ns));
        d.last_correction = Some(action.as_str());
        d.last_sync_unix = Some(unix_secs_f64(now_ns() + self.pending_offset_ns));
        d.poll_interval_seconds = Some(self.interval.as_secs());
        d.consecutive_failures = 0;
        d.last_error = None;
        match status::mark_synced(&self.opts.run_dir) {
            Ok(true) => info!(
                "clock synchronised: {} created",
                status::dir(&self.opts.run_dir)
                    .join(status::SYNCED_MARKER)
                    .display()
            ),
            Ok(false) => {}
            Err(e) => error!("cannot create the synced marker: {e}"),
        }
        self.save_time("after sync");
        self.publish();
    }

    fn on_failure(&mut self, errors: Vec<QueryError>, extra: Option<String>, rate_limited: bool) {
        let d = &mut self.doc;
        d.consecutive_failures = d.consecutive_failures.saturating_add(1);
        let mut reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
        reasons.extend(extra);
        if reasons.is_empty() {
            reasons.push("no server to ask".into());
        }
        let cap = if d.synced {
            self.opts.max_poll
        } else {
            self.opts.min_poll
        };
        let mut delay = backoff(d.consecutive_failures, self.opts.retry_min, cap);
        if rate_limited {
            delay = delay.max(self.interval.saturating_mul(2).min(self.opts.max_poll));
            self.interval = delay;
        }
        let reason = reasons.join("; ");
        warn!(
            "no good time sample ({} failure{} in a row): {reason}; retrying in {} s",
            d.consecutive_failures,
            if d.consecutive_failures == 1 { "" } else { "s" },
            delay.as_secs_f64()
        );
        d.last_error = Some(reason);
        d.poll_interval_seconds = Some(delay.as_secs());
        self.next_poll = Some(Instant::now() + delay);
        self.publish();
    }

    async fn poll(&mut self) {
        let Some(settings) = self.settings.clone().filter(|s| !s.disabled) else {
            self.next_poll = None;
            return;
        };
        let attempt = self.attempt(&settings).await;
        for e in &attempt.errors {
            if let QueryError::Reply { addr, source } = e
                && source.is_access_denied()
            {
                warn!("{addr} refuses service ({source}); not asking it again until reload");
                self.denied.insert(*addr);
            }
        }
        match attempt.good {
            Some((server, m)) => self.on_good(server, m),
            None => {
                let rate_limited = attempt.errors.iter().any(|e| {
                    matches!(e, QueryError::Reply { source: ntp::ReplyError::Kiss(code), .. } if code == "RATE")
                });
                self.on_failure(attempt.errors, None, rate_limited);
            }
        }
    }
}

/// Steps the clock forward to the saved time when it is behind it. Returns
/// (restored, saved time in Unix seconds).
fn restore(opts: &Options) -> (bool, Option<i64>) {
    if let Err(e) = std::fs::create_dir_all(&opts.state_dir) {
        error!("cannot create {}: {e}", opts.state_dir.display());
    }
    let saved = match persist::load(&opts.state_dir) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}; ignoring it");
            None
        }
    };
    let now = now_ns();
    let Some(target) = persist::restore_target(saved.as_ref(), now) else {
        match &saved {
            Some(s) => info!(
                "clock ({:.0}) is not behind the saved time ({}); left alone",
                ntp::secs_f64(now),
                s.unix_seconds
            ),
            None => info!("no saved time in {}", opts.state_dir.display()),
        }
        return (false, saved.map(|s| s.unix_seconds));
    };
    let saved_secs = saved.map(|s| s.unix_seconds);
    if !opts.set_clock {
        info!(
            "clock ({:.0}) is behind the saved time ({:.0}); not stepped (--no-set-clock)",
            ntp::secs_f64(now),
            ntp::secs_f64(target)
        );
        return (false, saved_secs);
    }
    match clock::set_unix_nanos(target) {
        Ok(()) => {
            info!(
                "clock stepped forward from {:.0} to the saved time {:.0} (+{:.0} s)",
                ntp::secs_f64(now),
                ntp::secs_f64(target),
                ntp::secs_f64(target - now)
            );
            (true, saved_secs)
        }
        Err(e) => {
            error!("cannot step the clock to the saved time: {e}");
            (false, saved_secs)
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> Result<(), Error> {
    // Signal handlers first, so an early SIGTERM is not fatal.
    let sig = |kind: SignalKind| signal(kind).map_err(Error::Signal);
    let mut sigterm = sig(SignalKind::terminate())?;
    let mut sigint = sig(SignalKind::interrupt())?;
    let mut sighup = sig(SignalKind::hangup())?;

    let (restored, saved_secs) = restore(&opts);
    let mut daemon = Daemon {
        doc: StateDoc {
            sets_clock: opts.set_clock,
            restored_from_state: restored,
            saved_time_unix: saved_secs,
            ..StateDoc::default()
        },
        settings: None,
        denied: HashSet::new(),
        interval: opts.min_poll,
        next_poll: None,
        pending_offset_ns: 0,
        opts,
    };
    match config::load(&daemon.opts.config) {
        Ok(settings) => daemon.apply_settings(settings),
        Err(e) => {
            error!("{e}; no server will be asked until the configuration is fixed (SIGHUP)");
            daemon.doc.config_error = Some(e.to_string());
        }
    }
    daemon.publish();
    // Ready once the clock is as good as the saved time makes it: waiting
    // for the network here would hold up the boot.
    if ready::notify(daemon.opts.ready_fd.as_deref())? {
        debug!("readiness signalled");
    }

    let mut save_tick = tokio::time::interval_at(
        Instant::now() + daemon.opts.save_interval,
        daemon.opts.save_interval,
    );
    save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_poll = daemon.next_poll;
        let poll_due = async move {
            match next_poll {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = poll_due => {
                // A poll is bounded by its timeouts; a stop request still
                // interrupts it.
                tokio::select! {
                    () = daemon.poll() => {}
                    _ = sigterm.recv() => break,
                    _ = sigint.recv() => break,
                }
            }
            _ = save_tick.tick() => daemon.save_time("periodic"),
            _ = sighup.recv() => daemon.reload(),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("stopping");
    daemon.save_time("shutdown");
    daemon.next_poll = None;
    daemon.publish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let min = 2 * S;
        let cap = 64 * S;
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n, min, cap).as_secs()).collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 32, 64, 64, 64, 64]);
        assert_eq!(backoff(0, min, cap), min);
        assert_eq!(backoff(u32::MAX, min, cap), cap);
        assert_eq!(backoff(40, Duration::from_secs(u64::MAX / 2), cap), cap);
        // A cap below the minimum wins.
        assert_eq!(backoff(1, 10 * S, 4 * S), 4 * S);
    }

    #[test]
    fn poll_interval_grows_until_a_step() {
        let (min, max) = (64 * S, 1024 * S);
        let mut i = min;
        let mut seen = vec![];
        for _ in 0..6 {
            i = next_interval(i, Action::Slew, min, max);
            seen.push(i.as_secs());
        }
        assert_eq!(seen, vec![128, 256, 512, 1024, 1024, 1024]);
        assert_eq!(next_interval(i, Action::None, min, max), max);
        assert_eq!(next_interval(i, Action::Step, min, max), min);
        assert_eq!(next_interval(S, Action::None, min, max), min);
    }
}

//! The daemon: restore the saved time, signal readiness, then poll the
//! configured servers for ever, correcting the clock and publishing status.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::clock::{self, Action, Clock};
use crate::config::{self, Settings};
use crate::error::{Error, QueryError};
use crate::guard::{self, Judgement, Pending, Policy, signed_secs};
use crate::ntp;
use crate::persist::{self, Saved};
use crate::query::{self, MAX_ADDRS_PER_NAME, Measurement};
use crate::ready;
use crate::status::{self, PendingStep, Refused, StateDoc};

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
    /// No answer may set the clock before this (Unix seconds): the image's
    /// build time, [`guard::BUILD_TIME_UNIX`].
    pub build_time_unix: i64,
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

fn unix_secs_f64(ns: i128) -> f64 {
    ntp::secs_f64(ns)
}

/// An answer, with the server (as configured) it came from.
#[derive(Debug, Clone)]
struct Answer {
    server: String,
    m: Measurement,
}

impl Answer {
    fn offset_ns(&self) -> i128 {
        self.m.sample.offset_ns
    }

    /// `pool.ntp.org (192.0.2.1:123)`, for messages.
    fn source(&self) -> String {
        format!("{} ({})", self.server, self.m.addr)
    }
}

/// A sample to use, and, for a correction beyond the bound, what agreed
/// with it.
#[derive(Debug)]
struct Good {
    answer: Answer,
    confirmed_by: Option<String>,
}

/// The outcome of one attempt over every server.
#[derive(Debug, Default)]
struct Attempt {
    /// The sample to use, if any.
    good: Option<Good>,
    /// Answers beyond the bound that no other address agreed with.
    large: Vec<Answer>,
    /// Answers refused outright, and why.
    refused: Vec<(Answer, String)>,
    /// The distinct addresses that gave a valid answer.
    answered: HashSet<IpAddr>,
    /// Every failure met on the way.
    errors: Vec<QueryError>,
}

struct Daemon {
    opts: Options,
    clock: Box<dyn Clock>,
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
    /// A large step the only answering address asks for, not yet confirmed.
    pending_step: Option<Pending>,
}

impl Daemon {
    fn new(opts: Options, clock: Box<dyn Clock>, doc: StateDoc) -> Self {
        Self {
            doc: StateDoc {
                build_time_unix: opts.build_time_unix,
                max_step_seconds: guard::DEFAULT_MAX_STEP_SECONDS,
                ..doc
            },
            clock,
            settings: None,
            denied: HashSet::new(),
            interval: opts.min_poll,
            next_poll: None,
            pending_offset_ns: 0,
            pending_step: None,
            opts,
        }
    }

    fn now_ns(&self) -> i128 {
        self.clock.now_ns()
    }

    fn publish(&mut self) {
        let now = self.now_ns();
        self.doc.next_poll_unix = self.next_poll.map(|at| {
            let wait = at.saturating_duration_since(Instant::now());
            unix_secs_f64(now + wait.as_nanos() as i128)
        });
        self.doc.pending_step = self.pending_step.map(|p| PendingStep {
            address: p.ip.to_string(),
            offset_seconds: ntp::secs_f64(p.offset_ns),
            confirmations: p.count,
            needed: guard::CONFIRMATIONS,
        });
        if let Err(e) = status::write_state(&self.opts.run_dir, &self.doc) {
            error!("cannot write the time status: {e}");
        }
    }

    fn save_time(&self, why: &str) {
        let estimate = self.now_ns() + self.pending_offset_ns;
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
        self.doc.max_step_seconds = settings.max_step_seconds;
        self.doc.config_error = None;
        self.denied.clear();
        self.pending_step = None;
        self.next_poll = if settings.disabled {
            info!("time synchronisation is disabled (machine.time.disabled)");
            None
        } else {
            info!(
                "time servers: {}{}; one answer steps the clock by at most {} s",
                settings.servers.join(", "),
                if settings.default_servers {
                    " (built-in default)"
                } else {
                    ""
                },
                settings.max_step_seconds
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

    /// Asks the servers in order, each address once, until an answer can be
    /// used: one within the bound, or a large one a second address agrees
    /// with.
    async fn attempt(&self, settings: &Settings, policy: &Policy) -> Attempt {
        let mut at = Attempt::default();
        let mut asked: HashSet<IpAddr> = HashSet::new();
        for name in &settings.servers {
            let addrs = match query::resolve(name, self.opts.port, self.opts.query_timeout).await {
                Ok(a) => a,
                Err(e) => {
                    at.errors.push(e);
                    continue;
                }
            };
            let fresh: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| !self.denied.contains(a) && asked.insert(a.ip()))
                .take(MAX_ADDRS_PER_NAME)
                .collect();
            for addr in fresh {
                let m = match query::query(addr, self.opts.query_timeout, self.clock.as_ref()).await
                {
                    Ok(m) => m,
                    Err(e) => {
                        debug!("{name}: {e}");
                        at.errors.push(e);
                        continue;
                    }
                };
                at.answered.insert(addr.ip());
                let answer = Answer {
                    server: name.clone(),
                    m,
                };
                let now = self.now_ns();
                match policy.judge(now, answer.offset_ns()) {
                    Judgement::BeforeFloor => {
                        let reason = format!(
                            "it would set the clock to {:.0}, before the image's build time {}",
                            unix_secs_f64(now + answer.offset_ns()),
                            self.opts.build_time_unix
                        );
                        at.refused.push((answer, reason));
                    }
                    Judgement::Apply => {
                        at.good = Some(Good {
                            answer,
                            confirmed_by: None,
                        });
                        return at;
                    }
                    Judgement::Large => {
                        let agreeing = at
                            .large
                            .iter()
                            .position(|o| guard::agree(o.offset_ns(), answer.offset_ns()));
                        if let Some(i) = agreeing {
                            let other = at.large.remove(i);
                            at.good = Some(Good {
                                answer,
                                confirmed_by: Some(format!(
                                    "{} measured {}",
                                    other.source(),
                                    signed_secs(other.offset_ns())
                                )),
                            });
                            return at;
                        }
                        at.large.push(answer);
                    }
                }
            }
        }
        at
    }

    /// Records an answer that is not used; returns the line for
    /// `last_error`.
    fn refuse(&mut self, answer: &Answer, reason: &str) -> String {
        warn!(
            "refused the answer of {} (offset {}): {reason}",
            answer.source(),
            signed_secs(answer.offset_ns())
        );
        self.doc.refused_answers = self.doc.refused_answers.saturating_add(1);
        self.doc.last_refused = Some(Refused {
            server: answer.server.clone(),
            address: answer.m.addr.to_string(),
            offset_seconds: ntp::secs_f64(answer.offset_ns()),
            reason: reason.to_owned(),
            at_unix: unix_secs_f64(self.now_ns()),
        });
        format!("refused the answer of {}: {reason}", answer.source())
    }

    /// Decides about the large answers of an attempt that gave no usable
    /// sample: the only answering address may confirm its step by repeating
    /// it; anything else is refused. Returns the sample to use, if the
    /// confirmations are complete, and the refusals.
    fn confirm_large(
        &mut self,
        large: Vec<Answer>,
        answered: usize,
        policy: &Policy,
    ) -> (Option<Good>, Vec<String>) {
        let bound = policy.max_step_seconds();
        if let [answer] = large.as_slice()
            && answered == 1
        {
            let count = guard::confirm(
                &mut self.pending_step,
                answer.m.addr.ip(),
                answer.offset_ns(),
                Instant::now(),
            );
            if count >= guard::CONFIRMATIONS {
                self.pending_step = None;
                let confirmed_by = format!(
                    "{count} consistent answers from {} (the only address that answered)",
                    answer.m.addr
                );
                return (
                    Some(Good {
                        answer: answer.clone(),
                        confirmed_by: Some(confirmed_by),
                    }),
                    vec![],
                );
            }
            let reason = format!(
                "a step of {} is beyond the {bound} s one answer may make and no other server \
                 answered; waiting for {} consistent answers from it within {} s ({count} so far)",
                signed_secs(answer.offset_ns()),
                guard::CONFIRMATIONS,
                guard::CONFIRM_WINDOW.as_secs()
            );
            return (None, vec![self.refuse(answer, &reason)]);
        }
        self.pending_step = None;
        let lines = large
            .iter()
            .map(|answer| {
                let reason = format!(
                    "a step of {} is beyond the {bound} s one answer may make, and no other \
                     server agrees with it ({answered} addresses answered)",
                    signed_secs(answer.offset_ns()),
                );
                self.refuse(answer, &reason)
            })
            .collect();
        (None, lines)
    }

    fn on_good(&mut self, good: Good) {
        let Good {
            answer: Answer { server, m },
            confirmed_by,
        } = good;
        let offset = m.sample.offset_ns;
        let first = !self.doc.synced;
        let action = clock::decide(offset, first);
        let applied = if self.opts.set_clock {
            let result = match action {
                Action::Step => self.clock.step_by(offset),
                Action::Slew => self.clock.slew_by(offset),
                Action::None => Ok(()),
            };
            if let Err(e) = result {
                // Treated as a failed attempt: the clock is not right.
                self.on_failure(
                    vec![],
                    vec![format!("cannot correct the clock: {e}")],
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
        let agreed = confirmed_by
            .as_deref()
            .map(|c| format!("; agreed by {c}"))
            .unwrap_or_default();
        let msg = format!(
            "{} {server} ({}): offset {:+.6} s, delay {:.6} s, stratum {}{agreed}{applied}",
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
        let last_sync = unix_secs_f64(self.now_ns() + self.pending_offset_ns);
        let d = &mut self.doc;
        d.synced = true;
        d.server = Some(server);
        d.address = Some(m.addr.to_string());
        d.stratum = Some(m.reply.stratum);
        d.offset_seconds = Some(ntp::secs_f64(offset));
        d.delay_seconds = Some(ntp::secs_f64(m.sample.delay_ns));
        d.last_correction = Some(action.as_str());
        if confirmed_by.is_some() {
            d.last_step_confirmed_by = confirmed_by;
        }
        d.last_sync_unix = Some(last_sync);
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

    fn on_failure(&mut self, errors: Vec<QueryError>, extra: Vec<String>, rate_limited: bool) {
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
        if self.pending_step.is_some() {
            // Its confirmations must come within the window.
            delay = delay.min(self.opts.min_poll);
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
        let policy = Policy::new(settings.max_step_seconds, self.opts.build_time_unix);
        let attempt = self.attempt(&settings, &policy).await;
        for e in &attempt.errors {
            if let QueryError::Reply { addr, source } = e
                && source.is_access_denied()
            {
                warn!("{addr} refuses service ({source}); not asking it again until reload");
                self.denied.insert(*addr);
            }
        }
        let mut refusals: Vec<String> = attempt
            .refused
            .iter()
            .map(|(answer, reason)| self.refuse(answer, reason))
            .collect();
        let good = match attempt.good {
            Some(good) => {
                // Large answers that a usable one contradicts.
                for answer in &attempt.large {
                    let reason = format!(
                        "a step of {} is beyond the {} s one answer may make, and {} measured {}",
                        signed_secs(answer.offset_ns()),
                        policy.max_step_seconds(),
                        good.answer.source(),
                        signed_secs(good.answer.offset_ns())
                    );
                    self.refuse(answer, &reason);
                }
                Some(good)
            }
            None if attempt.large.is_empty() => None,
            None => {
                let (good, lines) =
                    self.confirm_large(attempt.large, attempt.answered.len(), &policy);
                refusals.extend(lines);
                good
            }
        };
        match good {
            Some(good) => {
                self.pending_step = None;
                self.on_good(good);
            }
            None => {
                let rate_limited = attempt.errors.iter().any(|e| {
                    matches!(e, QueryError::Reply { source: ntp::ReplyError::Kiss(code), .. } if code == "RATE")
                });
                self.on_failure(attempt.errors, refusals, rate_limited);
            }
        }
    }
}

/// What the clock was stepped forward to at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Restored {
    /// To the saved time.
    saved: bool,
    /// To the image's build time (later than the saved time, or none saved).
    build_time: bool,
    /// The saved time found (Unix seconds).
    saved_secs: Option<i64>,
}

/// Steps the clock forward to the saved time, or to the image's build time
/// if that is later, when the clock is behind it.
fn restore(opts: &Options, clock: &dyn Clock) -> Restored {
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
    let saved_secs = saved.map(|s| s.unix_seconds);
    let mut out = Restored {
        saved_secs,
        ..Restored::default()
    };
    let now = clock.now_ns();
    let floor = i128::from(opts.build_time_unix) * 1_000_000_000;
    let (target, to_saved) = match persist::restore_target(saved.as_ref(), now) {
        Some(t) if t >= floor => (t, true),
        _ if floor > now => (floor, false),
        _ => {
            match &saved {
                Some(s) => info!(
                    "clock ({:.0}) is not behind the saved time ({}) nor the build time ({}); left alone",
                    ntp::secs_f64(now),
                    s.unix_seconds,
                    opts.build_time_unix
                ),
                None => info!(
                    "no saved time in {}; the clock ({:.0}) is not behind the build time ({})",
                    opts.state_dir.display(),
                    ntp::secs_f64(now),
                    opts.build_time_unix
                ),
            }
            return out;
        }
    };
    let what = if to_saved {
        "the saved time"
    } else {
        "the image's build time"
    };
    if !opts.set_clock {
        info!(
            "clock ({:.0}) is behind {what} ({:.0}); not stepped (--no-set-clock)",
            ntp::secs_f64(now),
            ntp::secs_f64(target)
        );
        return out;
    }
    match clock.set_unix_nanos(target) {
        Ok(()) => {
            info!(
                "clock stepped forward from {:.0} to {what} {:.0} (+{:.0} s)",
                ntp::secs_f64(now),
                ntp::secs_f64(target),
                ntp::secs_f64(target - now)
            );
            out.saved = to_saved;
            out.build_time = !to_saved;
            out
        }
        Err(e) => {
            error!("cannot step the clock to {what}: {e}");
            out
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: Options, clock: Box<dyn Clock>) -> Result<(), Error> {
    // Signal handlers first, so an early SIGTERM is not fatal.
    let sig = |kind: SignalKind| signal(kind).map_err(Error::Signal);
    let mut sigterm = sig(SignalKind::terminate())?;
    let mut sigint = sig(SignalKind::interrupt())?;
    let mut sighup = sig(SignalKind::hangup())?;

    let restored = restore(&opts, clock.as_ref());
    let doc = StateDoc {
        sets_clock: opts.set_clock,
        restored_from_state: restored.saved,
        raised_to_build_time: restored.build_time,
        saved_time_unix: restored.saved_secs,
        ..StateDoc::default()
    };
    let mut daemon = Daemon::new(opts, clock, doc);
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

/// The step guard end to end: real SNTP exchanges with fake servers on
/// loopback (127.0.0.1 and 127.0.0.2, one port), driving the daemon's polls
/// one by one against a virtual clock.
#[cfg(test)]
mod guard_tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use tokio::net::UdpSocket;

    use super::*;
    use crate::ntp::NtpTimestamp;

    const SEC: i128 = 1_000_000_000;
    const DAY: i128 = 86_400 * SEC;

    fn host_now() -> i128 {
        ntp::unix_nanos(SystemTime::now())
    }

    /// The host's time plus what the daemon stepped; steps and slews are
    /// recorded, the host clock is never touched.
    #[derive(Clone, Default)]
    struct FakeClock(Arc<Mutex<Virtual>>);

    #[derive(Debug, Default)]
    struct Virtual {
        ahead_ns: i128,
        steps: Vec<i128>,
        slews: Vec<i128>,
    }

    impl FakeClock {
        fn steps(&self) -> Vec<i128> {
            self.0.lock().unwrap().steps.clone()
        }
        fn slews(&self) -> Vec<i128> {
            self.0.lock().unwrap().slews.clone()
        }
    }

    impl Clock for FakeClock {
        fn now_ns(&self) -> i128 {
            host_now() + self.0.lock().unwrap().ahead_ns
        }
        fn set_unix_nanos(&self, unix_ns: i128) -> Result<(), Error> {
            let mut v = self.0.lock().unwrap();
            let host = host_now();
            let step = unix_ns - (host + v.ahead_ns);
            v.steps.push(step);
            v.ahead_ns = unix_ns - host;
            Ok(())
        }
        fn slew_by(&self, offset_ns: i128) -> Result<(), Error> {
            self.0.lock().unwrap().slews.push(offset_ns);
            Ok(())
        }
    }

    /// An SNTP server answering every request with the host's time plus
    /// `ahead` nanoseconds (changeable while it runs).
    fn serve(sock: UdpSocket, ahead_ns: i128) -> Arc<AtomicI64> {
        let ahead = Arc::new(AtomicI64::new(i64::try_from(ahead_ns).unwrap()));
        let shared = Arc::clone(&ahead);
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let req = &buf[..n];
                if req.len() != ntp::PACKET_LEN {
                    continue;
                }
                let now = host_now() + i128::from(shared.load(Ordering::SeqCst));
                let ts = NtpTimestamp::from_unix_nanos(now).0.to_be_bytes();
                let mut b = [0u8; ntp::PACKET_LEN];
                b[0] = (4 << 3) | 4;
                b[1] = 2;
                b[12..16].copy_from_slice(b"GPS\0");
                b[24..32].copy_from_slice(&req[40..48]);
                b[32..40].copy_from_slice(&ts);
                b[40..48].copy_from_slice(&ts);
                let _ = sock.send_to(&b, peer).await;
            }
        });
        ahead
    }

    /// Fake servers on 127.0.0.1, 127.0.0.2, ... (one per offset), all on
    /// one port: the port and each server's offset control.
    async fn servers(offsets: &[i128]) -> (u16, Vec<Arc<AtomicI64>>) {
        'port: for _ in 0..20 {
            let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = first.local_addr().unwrap().port();
            let mut socks = vec![first];
            for i in 2..=offsets.len() {
                match UdpSocket::bind((format!("127.0.0.{i}"), port)).await {
                    Ok(s) => socks.push(s),
                    Err(_) => continue 'port,
                }
            }
            let controls = socks
                .into_iter()
                .zip(offsets)
                .map(|(s, &o)| serve(s, o))
                .collect();
            return (port, controls);
        }
        panic!("no port free on every loopback address");
    }

    fn daemon(dir: &Path, port: u16, n_servers: usize, clock: &FakeClock, floor: i64) -> Daemon {
        let opts = Options {
            config: dir.join("config.yaml"),
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            set_clock: true,
            min_poll: Duration::from_secs(64),
            max_poll: Duration::from_secs(1024),
            retry_min: Duration::from_secs(2),
            query_timeout: Duration::from_secs(5),
            save_interval: Duration::from_secs(900),
            port,
            ready_fd: None,
            build_time_unix: floor,
        };
        let doc = StateDoc {
            sets_clock: true,
            ..StateDoc::default()
        };
        let mut d = Daemon::new(opts, Box::new(clock.clone()), doc);
        d.apply_settings(Settings {
            servers: (1..=n_servers).map(|i| format!("127.0.0.{i}")).collect(),
            disabled: false,
            default_servers: false,
            max_step_seconds: guard::DEFAULT_MAX_STEP_SECONDS,
        });
        d
    }

    /// The published `state.json`.
    fn state(dir: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join("run/time/state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Whether `step` is `expected` give or take the exchange's error.
    fn near(step: i128, expected: i128) -> bool {
        (step - expected).abs() < SEC / 4
    }

    /// A build time an hour ago, Unix seconds.
    fn floor_an_hour_ago() -> i64 {
        i64::try_from(host_now() / SEC).unwrap() - 3_600
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_server_a_day_ahead_needs_three_consistent_answers() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _servers) = servers(&[DAY]).await;
        let clock = FakeClock::default();
        let mut d = daemon(dir.path(), port, 1, &clock, floor_an_hour_ago());

        for n in 1..guard::CONFIRMATIONS {
            d.poll().await;
            assert!(
                clock.steps().is_empty(),
                "stepped after {n}: {:?}",
                clock.steps()
            );
            assert!(clock.slews().is_empty());
            let s = state(dir.path());
            assert_eq!(s["synced"], false, "{s}");
            assert_eq!(s["refused_answers"], n, "{s}");
            let reason = s["last_refused"]["reason"].as_str().unwrap();
            assert!(reason.contains("beyond the 1000 s"), "{reason}");
            assert!(reason.contains(&format!("({n} so far)")), "{reason}");
            assert_eq!(s["last_refused"]["address"], format!("127.0.0.1:{port}"));
            assert!(s["last_refused"]["offset_seconds"].as_f64().unwrap() > 86_399.0);
            assert_eq!(s["pending_step"]["confirmations"], n, "{s}");
            assert_eq!(s["pending_step"]["needed"], guard::CONFIRMATIONS, "{s}");
            assert_eq!(s["pending_step"]["address"], "127.0.0.1");
            // What `nodectl get time` shows as its note.
            let note = s["last_error"].as_str().unwrap();
            assert!(note.contains("refused the answer of 127.0.0.1"), "{note}");
            assert!(!dir.path().join("run/time/synced").exists());
            // The next attempt comes soon enough for the window.
            assert!(s["poll_interval_seconds"].as_u64().unwrap() <= 64, "{s}");
        }

        d.poll().await;
        let steps = clock.steps();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert!(near(steps[0], DAY), "{steps:?}");
        let s = state(dir.path());
        assert_eq!(s["synced"], true, "{s}");
        assert_eq!(s["last_correction"], "step");
        assert!(s["pending_step"].is_null(), "{s}");
        let how = s["last_step_confirmed_by"].as_str().unwrap();
        assert!(how.contains("3 consistent answers"), "{how}");
        assert!(s["last_error"].is_null(), "{s}");

        // Stepped: the same server is now in agreement, a small offset.
        d.poll().await;
        assert_eq!(clock.steps().len(), 1, "{:?}", clock.steps());
        assert_eq!(state(dir.path())["refused_answers"], 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn two_servers_agreeing_on_a_day_step_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _servers) = servers(&[DAY, DAY + SEC / 10]).await;
        let clock = FakeClock::default();
        let mut d = daemon(dir.path(), port, 2, &clock, floor_an_hour_ago());

        d.poll().await;
        let steps = clock.steps();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert!(near(steps[0], DAY + SEC / 10), "{steps:?}");
        let s = state(dir.path());
        assert_eq!(s["synced"], true, "{s}");
        assert_eq!(s["address"], format!("127.0.0.2:{port}"), "{s}");
        let how = s["last_step_confirmed_by"].as_str().unwrap();
        assert!(
            how.contains(&format!("127.0.0.1 (127.0.0.1:{port}) measured +86400")),
            "{how}"
        );
        assert_eq!(s["refused_answers"], 0, "{s}");
        assert!(s["last_refused"].is_null(), "{s}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_large_answer_another_server_contradicts_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _servers) = servers(&[DAY, SEC / 2]).await;
        let clock = FakeClock::default();
        let mut d = daemon(dir.path(), port, 2, &clock, floor_an_hour_ago());

        // The first sync steps by the small offset; the day is refused.
        d.poll().await;
        let steps = clock.steps();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert!(near(steps[0], SEC / 2), "{steps:?}");
        let s = state(dir.path());
        assert_eq!(s["synced"], true, "{s}");
        assert_eq!(s["address"], format!("127.0.0.2:{port}"));
        assert_eq!(s["refused_answers"], 1, "{s}");
        assert_eq!(s["last_refused"]["address"], format!("127.0.0.1:{port}"));
        let reason = s["last_refused"]["reason"].as_str().unwrap();
        assert!(reason.contains("+86400"), "{reason}");
        assert!(reason.contains("127.0.0.2"), "{reason}");
        assert!(s["pending_step"].is_null(), "{s}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn large_answers_that_disagree_are_all_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _servers) = servers(&[DAY, 2 * DAY]).await;
        let clock = FakeClock::default();
        let mut d = daemon(dir.path(), port, 2, &clock, floor_an_hour_ago());

        for attempt in 1..=guard::CONFIRMATIONS {
            d.poll().await;
            assert!(clock.steps().is_empty(), "{:?}", clock.steps());
            let s = state(dir.path());
            assert_eq!(s["synced"], false, "{s}");
            assert_eq!(s["refused_answers"], 2 * attempt, "{s}");
            // Two addresses answered: no confirmation by repetition.
            assert!(s["pending_step"].is_null(), "{s}");
            let note = s["last_error"].as_str().unwrap();
            assert!(note.contains("no other server agrees"), "{note}");
            assert!(
                note.contains("127.0.0.1") && note.contains("127.0.0.2"),
                "{note}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn answers_before_the_build_time_are_refused_even_in_agreement() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _servers) = servers(&[-2 * DAY, -2 * DAY]).await;
        let clock = FakeClock::default();
        let floor = i64::try_from(host_now() / SEC).unwrap() - 86_400;
        let mut d = daemon(dir.path(), port, 2, &clock, floor);

        d.poll().await;
        assert!(clock.steps().is_empty(), "{:?}", clock.steps());
        assert!(clock.slews().is_empty());
        let s = state(dir.path());
        assert_eq!(s["synced"], false, "{s}");
        assert_eq!(s["build_time_unix"], floor);
        assert_eq!(s["refused_answers"], 2, "{s}");
        let reason = s["last_refused"]["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("before the image's build time {floor}")),
            "{reason}"
        );
        assert!(
            s["last_error"].as_str().unwrap().contains("build time"),
            "{s}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn small_offsets_are_applied_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let (port, servers) = servers(&[SEC / 2]).await;
        let clock = FakeClock::default();
        let mut d = daemon(dir.path(), port, 1, &clock, floor_an_hour_ago());

        // First sample: stepped, whatever its size within the bound.
        d.poll().await;
        let steps = clock.steps();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert!(near(steps[0], SEC / 2), "{steps:?}");

        // 50 ms more: slewed.
        servers[0].store((SEC / 2 + SEC / 20) as i64, Ordering::SeqCst);
        d.poll().await;
        assert_eq!(clock.steps().len(), 1);
        let slews = clock.slews();
        assert_eq!(slews.len(), 1, "{slews:?}");
        assert!((slews[0] - SEC / 20).abs() < SEC / 40, "{slews:?}");
        assert_eq!(state(dir.path())["last_correction"], "slew");

        // 30 s more (above the step threshold, within the bound): stepped
        // on this one server's word, as before.
        servers[0].store((SEC / 2 + 30 * SEC) as i64, Ordering::SeqCst);
        d.poll().await;
        let steps = clock.steps();
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(near(steps[1], 30 * SEC), "{steps:?}");
        let s = state(dir.path());
        assert_eq!(s["last_correction"], "step");
        assert_eq!(s["refused_answers"], 0, "{s}");
        assert!(s["last_step_confirmed_by"].is_null(), "{s}");
        assert_eq!(s["max_step_seconds"], 1000);
    }

    #[test]
    fn restore_raises_the_clock_to_the_build_time() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::default();
        let host_secs = i64::try_from(host_now() / SEC).unwrap();
        let mut opts = daemon_opts(dir.path());
        opts.build_time_unix = host_secs + 86_400;

        // No saved time: to the build time.
        let r = restore(&opts, &clock);
        assert_eq!((r.saved, r.build_time, r.saved_secs), (false, true, None));
        assert_eq!(clock.steps().len(), 1);
        assert!(near(clock.now_ns(), i128::from(opts.build_time_unix) * SEC));

        // A saved time later than the build time wins.
        let saved = host_secs + 3 * 86_400;
        persist::save(&opts.state_dir, &Saved::new(i128::from(saved) * SEC, true)).unwrap();
        let r = restore(&opts, &clock);
        assert_eq!((r.saved, r.build_time), (true, false));
        assert_eq!(r.saved_secs, Some(saved));
        assert!(near(clock.now_ns(), i128::from(saved) * SEC));

        // A saved time before the build time: the build time.
        opts.build_time_unix = host_secs + 5 * 86_400;
        let r = restore(&opts, &clock);
        assert_eq!((r.saved, r.build_time), (false, true));
        assert!(near(clock.now_ns(), i128::from(opts.build_time_unix) * SEC));

        // Ahead of both: left alone.
        opts.build_time_unix = host_secs;
        let r = restore(&opts, &clock);
        assert_eq!((r.saved, r.build_time), (false, false));
        assert_eq!(clock.steps().len(), 3);
    }

    fn daemon_opts(dir: &Path) -> Options {
        let clock = FakeClock::default();
        daemon(dir, 123, 1, &clock, 0).opts
    }
}

//! Service definitions: one TOML file per service, or built in code.
//!
//! ```toml
//! description = "Machine API server"
//! command = ["/usr/bin/apid", "--listen", "[::]:50000"]   # required, absolute path
//! env = { RUST_LOG = "info" }          # PATH defaults to /usr/bin:/sbin
//! after = ["networkd"]                 # start only once these are ready
//! conditions = ["/run/bramble/network/online"]  # paths that must exist first
//! restart = "always"                   # always | on-failure | never
//! restart_delay_ms = 250               # first backoff, doubled per consecutive failure
//! restart_delay_max_ms = 30000         # ... up to this
//! crash_loop_restarts = 5              # more restarts than this within the window
//! crash_loop_window_secs = 60          #   -> state crash_loop, retry every restart_delay_max_ms
//! stop_timeout_secs = 10               # SIGTERM, then SIGKILL after this
//! notify_ready = true                  # wait for "READY=1\n" on fd $BRAMBLE_READY_FD
//! log_console = true                   # echo captured lines to the console as "[name] line"
//! nice = -5                            # scheduling niceness, -20 (first) to 19; default 0
//! oom_score_adj = -900                 # the OOM killer's preference, -1000 (never) to 1000; default 0
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Default `PATH` given to services that do not set one.
pub const DEFAULT_PATH: &str = "/usr/bin:/sbin";
/// Environment variable carrying the readiness fd number: the protocol's
/// one definition is the daemons' side of it, `bramble_daemon::ready`.
pub use bramble_daemon::ready::READY_FD_ENV;
/// The readiness pipe's fd number in the child (the value of `BRAMBLE_READY_FD`).
/// A single digit, so `echo READY=1 >&$BRAMBLE_READY_FD` works even in dash.
pub const CHILD_READY_FD: i32 = 3;

/// Most service files [`load_dir`] accepts.
pub const MAX_SERVICES: usize = 256;
/// Largest service file accepted.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
const MAX_NAME: usize = 64;
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 4096;
const MAX_ENV: usize = 256;
const MAX_LIST: usize = 64;
const MAX_DELAY_MS: u64 = 24 * 3600 * 1000;
const MAX_CRASH_LOOP_RESTARTS: u32 = 1000;
const MAX_STOP_TIMEOUT_SECS: u64 = 3600;
/// Niceness range (`setpriority(2)`).
const NICE_RANGE: std::ops::RangeInclusive<i32> = -20..=19;
/// What the kernel accepts in `oom_score_adj`.
const OOM_SCORE_ADJ_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;

/// When a service that exited is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// After every exit, whatever the status.
    #[default]
    Always,
    /// Only after a non-zero exit code, a signal, or a failure to spawn.
    OnFailure,
    /// Never: the service stays `exited` (or `failed` if it could not spawn).
    Never,
}

/// One supervised service.
///
/// Build it from TOML ([`ServiceDef::from_toml_str`], [`ServiceDef::load_file`],
/// [`load_dir`]) or in code with [`ServiceDef::new`] and then setting fields.
/// Durations are `Duration`s here so code (and tests) may use sub-second values;
/// the TOML file uses `_ms` / `_secs` integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    /// Unique name (the file stem): 1–64 of `[A-Za-z0-9._-]`, not starting with `.`.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Program and arguments; the program must be an absolute path.
    pub command: Vec<String>,
    /// Extra environment. The service starts with an empty environment plus
    /// `PATH=/usr/bin:/sbin` (overridable here) and, with `notify_ready`,
    /// `BRAMBLE_READY_FD`.
    pub env: BTreeMap<String, String>,
    /// Services that must be ready before this one starts.
    pub after: Vec<String>,
    /// Absolute paths that must exist before this one starts.
    pub conditions: Vec<PathBuf>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// First restart delay; doubled for each consecutive failure.
    pub restart_delay: Duration,
    /// Cap of the restart delay, and the retry period in crash loop.
    pub restart_delay_max: Duration,
    /// More restarts than this within `crash_loop_window` means crash loop.
    pub crash_loop_restarts: u32,
    /// Window for counting restarts.
    pub crash_loop_window: Duration,
    /// Time between SIGTERM and SIGKILL when stopping.
    pub stop_timeout: Duration,
    /// Wait for `READY=1` on the readiness fd instead of being ready at spawn.
    pub notify_ready: bool,
    /// Echo captured output lines to the console sink.
    pub log_console: bool,
    /// Scheduling niceness given to the process as soon as it is spawned
    /// (`None`: PID 1's, 0). Threads it started before that keep 0.
    pub nice: Option<i32>,
    /// `/proc/<pid>/oom_score_adj` given to the process as soon as it is
    /// spawned (`None`: inherited from PID 1, 0); children inherit it.
    pub oom_score_adj: Option<i32>,
    /// File this definition was loaded from (used in error messages).
    pub source: Option<PathBuf>,
}

impl ServiceDef {
    /// A definition with the documented defaults.
    pub fn new<I, S>(name: impl Into<String>, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            name: name.into(),
            description: String::new(),
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            after: Vec::new(),
            conditions: Vec::new(),
            restart: RestartPolicy::Always,
            restart_delay: Duration::from_millis(250),
            restart_delay_max: Duration::from_millis(30_000),
            crash_loop_restarts: 5,
            crash_loop_window: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            notify_ready: false,
            log_console: false,
            nice: None,
            oom_score_adj: None,
            source: None,
        }
    }

    /// Parses one service file's text. `source` is only used in errors.
    pub fn from_toml_str(name: &str, text: &str, source: &Path) -> Result<Self, Error> {
        let file: ServiceFile = toml::from_str(text).map_err(|e| Error::Parse {
            path: source.to_path_buf(),
            message: describe_toml_error(&e, text),
        })?;
        let def = Self {
            name: name.to_string(),
            description: file.description,
            command: file.command,
            env: file.env,
            after: file.after,
            conditions: file.conditions,
            restart: file.restart,
            restart_delay: Duration::from_millis(file.restart_delay_ms),
            restart_delay_max: Duration::from_millis(file.restart_delay_max_ms),
            crash_loop_restarts: file.crash_loop_restarts,
            crash_loop_window: Duration::from_secs(file.crash_loop_window_secs),
            stop_timeout: Duration::from_secs(file.stop_timeout_secs),
            notify_ready: file.notify_ready,
            log_console: file.log_console,
            nice: file.nice,
            oom_score_adj: file.oom_score_adj,
            source: Some(source.to_path_buf()),
        };
        // Range checks that only make sense for the file's integer fields.
        if file.restart_delay_ms > MAX_DELAY_MS {
            return Err(def.invalid(
                "restart_delay_ms",
                format!("must be at most {MAX_DELAY_MS}"),
            ));
        }
        if file.restart_delay_max_ms > MAX_DELAY_MS {
            return Err(def.invalid(
                "restart_delay_max_ms",
                format!("must be at most {MAX_DELAY_MS}"),
            ));
        }
        if file.crash_loop_window_secs > MAX_DELAY_MS / 1000 {
            return Err(def.invalid(
                "crash_loop_window_secs",
                format!("must be at most {}", MAX_DELAY_MS / 1000),
            ));
        }
        if file.stop_timeout_secs > MAX_STOP_TIMEOUT_SECS {
            return Err(def.invalid(
                "stop_timeout_secs",
                format!("must be at most {MAX_STOP_TIMEOUT_SECS}"),
            ));
        }
        def.validate()?;
        Ok(def)
    }

    /// Loads `<dir>/<name>.toml`; the name is the file stem.
    pub fn load_file(path: &Path) -> Result<Self, Error> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| Error::Invalid {
                origin: path.display().to_string(),
                field: "name".into(),
                reason: "file name is not valid UTF-8".into(),
            })?;
        let text = read_bounded(path)?;
        Self::from_toml_str(name, &text, path)
    }

    /// Where this definition came from, for error messages.
    pub fn origin(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => format!("service \"{}\"", self.name),
        }
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            origin: self.origin(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// Checks this definition on its own (not its dependencies' existence).
    pub fn validate(&self) -> Result<(), Error> {
        validate_name(&self.name).map_err(|r| self.invalid("name", r))?;
        let Some(program) = self.command.first() else {
            return Err(self.invalid("command", "must not be empty"));
        };
        if !program.starts_with('/') {
            return Err(self.invalid(
                "command",
                format!("program \"{program}\" must be an absolute path"),
            ));
        }
        if self.command.len() > MAX_ARGS {
            return Err(self.invalid("command", format!("more than {MAX_ARGS} arguments")));
        }
        for arg in &self.command {
            if arg.len() > MAX_ARG_BYTES {
                return Err(self.invalid(
                    "command",
                    format!("argument longer than {MAX_ARG_BYTES} bytes"),
                ));
            }
            if arg.contains('\0') {
                return Err(self.invalid("command", "argument contains a NUL byte"));
            }
        }
        if self.env.len() > MAX_ENV {
            return Err(self.invalid("env", format!("more than {MAX_ENV} variables")));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(self.invalid("env", format!("invalid variable name \"{k}\"")));
            }
            if k == READY_FD_ENV {
                return Err(self.invalid("env", format!("{READY_FD_ENV} is set by the supervisor")));
            }
            if v.contains('\0') || v.len() > MAX_ARG_BYTES {
                return Err(self.invalid("env", format!("invalid value for \"{k}\"")));
            }
        }
        if self.after.len() > MAX_LIST {
            return Err(self.invalid("after", format!("more than {MAX_LIST} entries")));
        }
        for dep in &self.after {
            if dep == &self.name {
                return Err(self.invalid("after", "a service cannot depend on itself"));
            }
        }
        if self.conditions.len() > MAX_LIST {
            return Err(self.invalid("conditions", format!("more than {MAX_LIST} entries")));
        }
        for c in &self.conditions {
            if !c.is_absolute() {
                return Err(self.invalid(
                    "conditions",
                    format!("path \"{}\" must be absolute", c.display()),
                ));
            }
        }
        if self.restart_delay.is_zero() {
            return Err(self.invalid("restart_delay_ms", "must be at least 1"));
        }
        if self.restart_delay_max < self.restart_delay {
            return Err(self.invalid(
                "restart_delay_max_ms",
                "must not be smaller than restart_delay_ms",
            ));
        }
        if self.restart_delay_max > Duration::from_millis(MAX_DELAY_MS) {
            return Err(self.invalid(
                "restart_delay_max_ms",
                format!("must be at most {MAX_DELAY_MS}"),
            ));
        }
        if self.crash_loop_restarts == 0 || self.crash_loop_restarts > MAX_CRASH_LOOP_RESTARTS {
            return Err(self.invalid(
                "crash_loop_restarts",
                format!("must be between 1 and {MAX_CRASH_LOOP_RESTARTS}"),
            ));
        }
        if self.crash_loop_window.is_zero() {
            return Err(self.invalid("crash_loop_window_secs", "must be at least 1"));
        }
        if self.stop_timeout > Duration::from_secs(MAX_STOP_TIMEOUT_SECS) {
            return Err(self.invalid(
                "stop_timeout_secs",
                format!("must be at most {MAX_STOP_TIMEOUT_SECS}"),
            ));
        }
        for (field, value, range) in [
            ("nice", self.nice, NICE_RANGE),
            ("oom_score_adj", self.oom_score_adj, OOM_SCORE_ADJ_RANGE),
        ] {
            if let Some(v) = value
                && !range.contains(&v)
            {
                return Err(self.invalid(
                    field,
                    format!("{v} is outside {} to {}", range.start(), range.end()),
                ));
            }
        }
        Ok(())
    }
}

/// The on-disk schema.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    #[serde(default)]
    description: String,
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    conditions: Vec<PathBuf>,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default = "d_restart_delay_ms")]
    restart_delay_ms: u64,
    #[serde(default = "d_restart_delay_max_ms")]
    restart_delay_max_ms: u64,
    #[serde(default = "d_crash_loop_restarts")]
    crash_loop_restarts: u32,
    #[serde(default = "d_crash_loop_window_secs")]
    crash_loop_window_secs: u64,
    #[serde(default = "d_stop_timeout_secs")]
    stop_timeout_secs: u64,
    #[serde(default)]
    notify_ready: bool,
    #[serde(default)]
    log_console: bool,
    #[serde(default)]
    nice: Option<i32>,
    #[serde(default)]
    oom_score_adj: Option<i32>,
}

fn d_restart_delay_ms() -> u64 {
    250
}
fn d_restart_delay_max_ms() -> u64 {
    30_000
}
fn d_crash_loop_restarts() -> u32 {
    5
}
fn d_crash_loop_window_secs() -> u64 {
    60
}
fn d_stop_timeout_secs() -> u64 {
    10
}

/// Turns a TOML error into one line: position, the offending source line, message.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim();
    let Some(span) = e.span() else {
        return msg.to_string();
    };
    let start = span.start.min(text.len());
    let line_no = text.as_bytes()[..start]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    if line.is_empty() {
        format!("line {line_no}: {msg}")
    } else {
        let shown: String = line.chars().take(120).collect();
        format!("line {line_no} (`{shown}`): {msg}")
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("\"{name}\" must be 1 to {MAX_NAME} characters"));
    }
    if name.starts_with('.') {
        return Err(format!("\"{name}\" must not start with '.'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!("\"{name}\" may only contain A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

fn read_bounded(path: &Path) -> Result<String, Error> {
    use std::io::Read;
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            message: format!("file larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(text)
}

/// Loads every `*.toml` file of `dir` (name = file stem), sorted by name, and
/// checks the set: each definition, unknown `after` names, duplicate names and
/// dependency cycles. Other files are ignored.
pub fn load_dir(dir: &Path) -> Result<Vec<ServiceDef>, Error> {
    let read_err = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // Follows symlinks: a link to a file is fine, a directory is not.
        if !path.is_file() {
            continue;
        }
        if paths.len() >= MAX_SERVICES {
            return Err(Error::Invalid {
                origin: dir.display().to_string(),
                field: "services".into(),
                reason: format!("more than {MAX_SERVICES} service files"),
            });
        }
        paths.push(path);
    }
    paths.sort();
    let defs = paths
        .iter()
        .map(|p| ServiceDef::load_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    validate_set(&defs)?;
    Ok(defs)
}

/// Checks a whole set of definitions and returns a dependency order
/// (indices into `defs`, every service after all of its `after` entries).
pub fn validate_set(defs: &[ServiceDef]) -> Result<Vec<usize>, Error> {
    if defs.len() > MAX_SERVICES {
        return Err(Error::Invalid {
            origin: "service set".into(),
            field: "services".into(),
            reason: format!("more than {MAX_SERVICES} services"),
        });
    }
    let mut index = BTreeMap::new();
    for (i, d) in defs.iter().enumerate() {
        d.validate()?;
        if index.insert(d.name.as_str(), i).is_some() {
            return Err(d.invalid("name", format!("duplicate service name \"{}\"", d.name)));
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(defs.len());
    for d in defs {
        let mut v = Vec::new();
        for a in &d.after {
            match index.get(a.as_str()) {
                Some(&j) => {
                    if !v.contains(&j) {
                        v.push(j);
                    }
                }
                None => return Err(d.invalid("after", format!("unknown service \"{a}\""))),
            }
        }
        deps.push(v);
    }
    // Kahn's algorithm; whatever is left over sits on or behind a cycle.
    let mut remaining: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); defs.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &j in ds {
            dependents[j].push(i);
        }
    }
    let mut queue: VecDeque<usize> = (0..defs.len()).filter(|&i| remaining[i] == 0).collect();
    let mut order = Vec::with_capacity(defs.len());
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for &k in &dependents[i] {
            remaining[k] -= 1;
            if remaining[k] == 0 {
                queue.push_back(k);
            }
        }
    }
    if order.len() < defs.len() {
        // Walk dependencies among the unfinished nodes until one repeats.
        let start = (0..defs.len()).find(|&i| remaining[i] > 0).unwrap_or(0);
        let mut path = vec![start];
        let mut cur = start;
        for _ in 0..=defs.len() {
            let Some(&next) = deps[cur].iter().find(|&&j| remaining[j] > 0) else {
                break;
            };
            if let Some(pos) = path.iter().position(|&p| p == next) {
                let mut names: Vec<&str> =
                    path[pos..].iter().map(|&p| defs[p].name.as_str()).collect();
                names.push(defs[next].name.as_str());
                let first = &defs[path[pos]];
                return Err(
                    first.invalid("after", format!("dependency cycle: {}", names.join(" -> ")))
                );
            }
            path.push(next);
            cur = next;
        }
        return Err(defs[start].invalid("after", "dependency cycle"));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<ServiceDef, Error> {
        ServiceDef::from_toml_str(name, text, Path::new("/etc/bramble/services/x.toml"))
    }

    #[test]
    fn full_file_parses() {
        let d = parse(
            "apid",
            r#"
description = "Machine API server"
command = ["/usr/bin/apid", "--listen", "[::]:50000"]
env = { RUST_LOG = "info" }
after = ["networkd"]
conditions = ["/run/bramble/network/online"]
restart = "on-failure"
restart_delay_ms = 100
restart_delay_max_ms = 1000
crash_loop_restarts = 3
crash_loop_window_secs = 30
stop_timeout_secs = 5
notify_ready = true
log_console = true
nice = -5
oom_score_adj = -900
"#,
        )
        .unwrap();
        assert_eq!(d.name, "apid");
        assert_eq!(d.nice, Some(-5));
        assert_eq!(d.oom_score_adj, Some(-900));
        assert_eq!(d.command[2], "[::]:50000");
        assert_eq!(d.env["RUST_LOG"], "info");
        assert_eq!(d.restart, RestartPolicy::OnFailure);
        assert_eq!(d.restart_delay, Duration::from_millis(100));
        assert_eq!(d.crash_loop_window, Duration::from_secs(30));
        assert!(d.notify_ready && d.log_console);
    }

    #[test]
    fn defaults() {
        let d = parse("a", r#"command = ["/bin/true"]"#).unwrap();
        assert_eq!(d, {
            let mut e = ServiceDef::new("a", ["/bin/true"]);
            e.source = Some("/etc/bramble/services/x.toml".into());
            e
        });
    }

    #[test]
    fn unknown_field_named() {
        let e = parse("a", "command = [\"/bin/true\"]\nrestrat = \"never\"\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("x.toml") && s.contains("restrat") && s.contains("line 2"),
            "{s}"
        );
    }

    #[test]
    fn bad_value_names_line() {
        let e = parse("a", "command = [\"/bin/true\"]\nrestart = \"sometimes\"\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("restart = ") && s.contains("sometimes"), "{s}");
    }

    #[test]
    fn missing_command() {
        let s = parse("a", "description = \"x\"\n").unwrap_err().to_string();
        assert!(s.contains("command"), "{s}");
    }

    #[test]
    fn relative_command() {
        let s = parse("a", "command = [\"sleep\", \"1\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            s.contains("x.toml") && s.contains("`command`") && s.contains("absolute"),
            "{s}"
        );
    }

    #[test]
    fn other_field_checks() {
        for (text, field) in [
            ("command = []", "command"),
            (
                "command = [\"/a\"]\nconditions = [\"rel/path\"]",
                "conditions",
            ),
            (
                "command = [\"/a\"]\nrestart_delay_ms = 0",
                "restart_delay_ms",
            ),
            (
                "command = [\"/a\"]\nrestart_delay_ms = 10\nrestart_delay_max_ms = 5",
                "restart_delay_max_ms",
            ),
            (
                "command = [\"/a\"]\ncrash_loop_restarts = 0",
                "crash_loop_restarts",
            ),
            (
                "command = [\"/a\"]\nenv = { BRAMBLE_READY_FD = \"3\" }",
                "env",
            ),
            ("command = [\"/a\"]\nafter = [\"a\"]", "after"),
            ("command = [\"/a\"]\nnice = -21", "nice"),
            ("command = [\"/a\"]\nnice = 20", "nice"),
            ("command = [\"/a\"]\noom_score_adj = -1001", "oom_score_adj"),
            ("command = [\"/a\"]\noom_score_adj = 1001", "oom_score_adj"),
        ] {
            let s = parse("a", text).unwrap_err().to_string();
            assert!(s.contains(&format!("`{field}`")), "{text}: {s}");
        }
        let s = parse("bad name", "command = [\"/a\"]")
            .unwrap_err()
            .to_string();
        assert!(s.contains("`name`"), "{s}");
    }

    #[test]
    fn set_checks() {
        let mut a = ServiceDef::new("a", ["/bin/true"]);
        let mut b = ServiceDef::new("b", ["/bin/true"]);
        let c = ServiceDef::new("c", ["/bin/true"]);
        b.after = vec!["a".into()];
        let order = validate_set(&[b.clone(), a.clone(), c.clone()]).unwrap();
        let pos = |i| order.iter().position(|&x| x == i).unwrap();
        assert!(pos(1) < pos(0));

        b.after = vec!["zz".into()];
        let s = validate_set(&[a.clone(), b.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            s.contains("service \"b\"") && s.contains("`after`") && s.contains("\"zz\""),
            "{s}"
        );

        b.after = vec!["c".into()];
        let mut c2 = c.clone();
        c2.after = vec!["a".into()];
        a.after = vec!["b".into()];
        let s = validate_set(&[a.clone(), b.clone(), c2])
            .unwrap_err()
            .to_string();
        assert!(s.contains("cycle") && s.contains("`after`"), "{s}");

        let s = validate_set(&[c.clone(), c]).unwrap_err().to_string();
        assert!(s.contains("duplicate"), "{s}");
    }

    #[test]
    fn load_dir_errors_name_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, t: &str| std::fs::write(dir.path().join(n), t).unwrap();
        w("a.toml", "command = [\"/bin/true\"]\n");
        w("b.toml", "command = [\"/bin/true\"]\nafter = [\"a\"]\n");
        w("README", "not a service");
        let defs = load_dir(dir.path()).unwrap();
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[1].after, vec!["a".to_string()]);

        w("c.toml", "command = [\"/bin/true\"]\nafter = [\"nope\"]\n");
        let s = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            s.contains("c.toml") && s.contains("`after`") && s.contains("nope"),
            "{s}"
        );

        w("c.toml", "command = [\"/bin/true\"]\nafter = [\"d\"]\n");
        w("d.toml", "command = [\"/bin/true\"]\nafter = [\"c\"]\n");
        let s = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            s.contains(".toml") && s.contains("cycle") && s.contains("c -> d -> c")
                || s.contains("d -> c -> d"),
            "{s}"
        );

        std::fs::remove_file(dir.path().join("d.toml")).unwrap();
        w("c.toml", "command = [\"/bin/true\"]\nbogus = 1\n");
        let s = load_dir(dir.path()).unwrap_err().to_string();
        assert!(s.contains("c.toml") && s.contains("bogus"), "{s}");

        w("c.toml", "command = [\"bin/true\"]\n");
        let s = load_dir(dir.path()).unwrap_err().to_string();
        assert!(s.contains("c.toml") && s.contains("`command`"), "{s}");

        let s = load_dir(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(s.contains("missing") && s.contains("cannot read"), "{s}");
    }
}

//! Keeps `machine.workloads` running: one task per workload pulls its image
//! when the store lacks it, mounts its root, starts a shim (which creates
//! the container with libcontainer and is its parent), captures its output,
//! and after it exits applies the restart policy with exponential backoff.
//! A new configuration starts new workloads, stops removed ones and
//! replaces changed ones; the others are not touched.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_config::{RestartPolicy, Workload};
use bramble_oci_store::{RegistryConfig, Store};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{Mutex, RwLock, watch};
use tokio::task::JoinHandle;

use crate::container::{self, ExitReport, SpecInput};
use crate::error::RuntimeError;
use crate::logs::{ContainerLog, Stream, now_ms};
use crate::ports::Published;
use crate::rootfs::{self, RootfsDirs};

/// First delay before a failed container (or pull) is tried again.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest delay between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long starts its next backoff from the start.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// Time the shim gets beyond the grace period to end after SIGTERM, before
/// it is killed.
const SHIM_EXTRA: Duration = Duration::from_secs(10);
/// Longest wait for a shim to report its container started; then it is
/// killed (the next shim removes what it left) and the start counts as
/// failed.
const START_LIMIT: Duration = Duration::from_secs(120);
/// How long a container's output may stay open after its shim ended before
/// its cgroup is killed (and again before the readers are dropped).
const OUTPUT_END_WAIT: Duration = Duration::from_secs(5);

/// Where the runtime keeps things on the node.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Per-container data on `/var` (writable layers).
    pub state_dir: PathBuf,
    /// Per-container bundles and libcontainer state (tmpfs).
    pub run_dir: PathBuf,
    /// Container logs (`<name>.log`).
    pub log_dir: PathBuf,
    /// The cgroup v2 directory under which containers get theirs.
    pub cgroup_parent: PathBuf,
    /// This binary, executed again as the shim.
    pub shim_exe: PathBuf,
    /// The node's resolver configuration and hosts file, bound into
    /// containers.
    pub resolv_conf: PathBuf,
    /// See `resolv_conf`.
    pub hosts: PathBuf,
}

impl Paths {
    fn bundle(&self, name: &str) -> PathBuf {
        self.run_dir.join("bundles").join(name)
    }
    fn libcontainer_root(&self) -> PathBuf {
        self.run_dir.join("state")
    }
    fn data(&self, name: &str) -> PathBuf {
        self.state_dir.join("containers").join(name)
    }
    /// The cgroup directory of container `name`.
    pub fn cgroup_dir(&self, name: &str) -> PathBuf {
        self.cgroup_parent.join(name)
    }
    fn cgroup_path(&self, name: &str) -> String {
        // libcontainer takes the path below the cgroup2 mount point.
        let parent = self
            .cgroup_parent
            .strip_prefix("/sys/fs/cgroup")
            .unwrap_or(&self.cgroup_parent);
        format!("/{}/{name}", parent.display().to_string().trim_matches('/'))
    }
}

/// What a workload's container is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Its image is being fetched.
    Pulling,
    /// Its root is being prepared and the shim started.
    Created,
    /// The container's process runs.
    Running,
    /// It ended and the policy does not start it again.
    Exited,
    /// Waiting to be started again.
    Backoff,
    /// It could not be started (pull, spec or creation failed); retried.
    Failed,
}

impl State {
    /// The name the API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pulling => "pulling",
            Self::Created => "created",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Backoff => "backoff",
            Self::Failed => "failed",
        }
    }
}

/// A workload's container as the API reports it.
#[derive(Debug, Clone)]
pub struct Status {
    /// Workload name.
    pub name: String,
    /// Image reference as configured.
    pub image: String,
    /// Manifest digest of the image in use.
    pub image_digest: String,
    /// Current state.
    pub state: State,
    /// Container init's pid while running.
    pub pid: u32,
    /// Restarts since the workload was created or changed.
    pub restarts: u32,
    /// The last exit.
    pub last_exit: Option<ExitReport>,
    /// Why it is in its state.
    pub reason: String,
    /// Seconds since the epoch of the last start.
    pub started_unix: u64,
}

/// Requests to a workload's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Command_ {
    /// Bumped by each restart request.
    restart: u64,
    /// The workload is going away.
    stop: bool,
}

#[derive(Debug)]
struct Managed {
    workload: Workload,
    status: std::sync::Mutex<Status>,
    log: Arc<ContainerLog>,
    control: watch::Sender<Command_>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Managed {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
    fn status(&self) -> Option<Status> {
        self.status.lock().ok().map(|s| s.clone())
    }
}

/// The runtime: the image store and the workloads' containers.
#[derive(Debug)]
pub struct Runtime {
    store: Arc<Store>,
    paths: Paths,
    registries: RwLock<RegistryConfig>,
    containers: Mutex<BTreeMap<String, Arc<Managed>>>,
}

impl Runtime {
    /// A runtime with no workloads yet.
    pub fn new(store: Store, paths: Paths) -> Self {
        Self {
            store: Arc::new(store),
            paths,
            registries: RwLock::new(RegistryConfig::default()),
            containers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The image store.
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// Where things are.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The registry settings in force.
    pub async fn registries(&self) -> RegistryConfig {
        self.registries.read().await.clone()
    }

    /// Makes the running set match `workloads` with `registries`: starts new
    /// workloads, stops removed ones, replaces changed ones.
    /// Called by one task only (the daemon's configuration loop).
    pub async fn reconcile(self: &Arc<Self>, workloads: Vec<Workload>, registries: RegistryConfig) {
        *self.registries.write().await = registries;
        let wanted: BTreeMap<String, Workload> =
            workloads.into_iter().map(|w| (w.name.clone(), w)).collect();
        // Out of the list first, stopped without holding it: the API keeps
        // answering during their grace periods.
        let stopping: Vec<Arc<Managed>> = {
            let mut containers = self.containers.lock().await;
            let going: Vec<String> = containers
                .iter()
                .filter(|(name, m)| wanted.get(*name) != Some(&m.workload))
                .map(|(name, _)| name.clone())
                .collect();
            going
                .into_iter()
                .filter_map(|name| {
                    tracing::info!(container = %name, "stopping (removed or changed)");
                    containers.remove(&name)
                })
                .collect()
        };
        stop_all_of(&stopping).await;
        let mut containers = self.containers.lock().await;
        for (name, workload) in wanted {
            if containers.contains_key(&name) {
                continue;
            }
            tracing::info!(container = %name, image = %workload.image, "starting");
            let managed = Arc::new(Managed {
                status: std::sync::Mutex::new(Status {
                    name: name.clone(),
                    image: workload.image.clone(),
                    image_digest: String::new(),
                    state: State::Created,
                    pid: 0,
                    restarts: 0,
                    last_exit: None,
                    reason: String::new(),
                    started_unix: 0,
                }),
                log: Arc::new(ContainerLog::new(
                    &self.paths.log_dir.join(format!("{name}.log")),
                )),
                control: watch::channel(Command_ {
                    restart: 0,
                    stop: false,
                })
                .0,
                workload,
                task: Mutex::new(None),
            });
            let task = tokio::spawn(supervise(Arc::clone(self), Arc::clone(&managed)));
            *managed.task.lock().await = Some(task);
            containers.insert(name, managed);
        }
    }

    /// Stops every container (at shutdown).
    pub async fn stop_all(&self) {
        let all: Vec<Arc<Managed>> = {
            let mut containers = self.containers.lock().await;
            std::mem::take(&mut *containers).into_values().collect()
        };
        stop_all_of(&all).await;
    }

    /// Every container's status, by name.
    pub async fn list(&self) -> Vec<Status> {
        self.containers
            .lock()
            .await
            .values()
            .filter_map(|m| m.status())
            .collect()
    }

    /// The log of container `name`.
    pub async fn log(&self, name: &str) -> Result<Arc<ContainerLog>, RuntimeError> {
        self.containers
            .lock()
            .await
            .get(name)
            .map(|m| Arc::clone(&m.log))
            .ok_or_else(|| RuntimeError::NotFound(name.to_owned()))
    }

    /// Asks container `name` to stop and start again (at once, no backoff).
    pub async fn restart(&self, name: &str) -> Result<(), RuntimeError> {
        let containers = self.containers.lock().await;
        let m = containers
            .get(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_owned()))?;
        m.control.send_modify(|c| c.restart += 1);
        Ok(())
    }

    /// Manifest digests of the images the workloads run.
    pub async fn digests_in_use(&self) -> Vec<String> {
        self.list()
            .await
            .into_iter()
            .map(|s| s.image_digest)
            .filter(|d| !d.is_empty())
            .collect()
    }
}

/// Stops all of `ms` side by side: each container gets its own grace
/// period rather than waiting behind the others.
async fn stop_all_of(ms: &[Arc<Managed>]) {
    for m in ms {
        m.control.send_modify(|c| c.stop = true);
    }
    for m in ms {
        if let Some(task) = m.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// Waits until `delay` has passed or a command arrives; true when the
/// workload must stop.
async fn pause(control: &mut watch::Receiver<Command_>, delay: Duration) -> bool {
    if control.borrow_and_update().stop {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        // A restart request ends the wait at once; a stop ends the task.
        changed = control.changed() => changed.is_err() || control.borrow().stop,
    }
}

/// One workload's life.
async fn supervise(rt: Arc<Runtime>, m: Arc<Managed>) {
    let mut control = m.control.subscribe();
    let mut backoff = BACKOFF_START;
    let mut restart_seen = control.borrow().restart;
    loop {
        if control.borrow().stop {
            break;
        }
        let started = Instant::now();
        let outcome = run_once(&rt, &m, &mut control).await;
        let restart_now = control.borrow().restart != restart_seen;
        restart_seen = control.borrow().restart;
        if control.borrow().stop {
            break;
        }
        let wait = match outcome {
            Err(e) => {
                let text = e.to_string();
                tracing::warn!(container = %m.workload.name, "{text}");
                m.log
                    .push(Stream::Stderr, &format!("bramble-runtimed: {text}"));
                m.set(|s| {
                    s.state = State::Failed;
                    s.pid = 0;
                    s.reason = text;
                });
                true
            }
            Ok(exit) => {
                let failed = exit.error.is_some()
                    || exit.oom_killed
                    || exit.signal.is_some()
                    || exit.exit_code != Some(0);
                let reason = describe_exit(&exit);
                tracing::info!(container = %m.workload.name, "{reason}");
                let again = restart_now
                    || match m.workload.restart {
                        RestartPolicy::Always => true,
                        RestartPolicy::OnFailure => failed,
                        RestartPolicy::Never => false,
                    };
                m.set(|s| {
                    s.pid = 0;
                    s.state = if again { State::Backoff } else { State::Exited };
                    s.reason = reason;
                    s.last_exit = Some(exit);
                });
                if !again {
                    // Stays exited until restarted or removed.
                    loop {
                        if control.changed().await.is_err() || control.borrow().stop {
                            return finish(&m);
                        }
                        if control.borrow().restart != restart_seen {
                            restart_seen = control.borrow().restart;
                            break;
                        }
                    }
                    m.set(|s| s.restarts += 1);
                    backoff = BACKOFF_START;
                    continue;
                }
                !restart_now
            }
        };
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            backoff = BACKOFF_START;
        }
        if wait {
            if pause(&mut control, backoff).await {
                break;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        m.set(|s| s.restarts += 1);
    }
    finish(&m);
}

fn finish(m: &Managed) {
    m.set(|s| {
        s.pid = 0;
        s.state = State::Exited;
    });
}

/// "exited with code 1", "killed by signal 9 (OOMKilled)", or the error.
pub fn describe_exit(exit: &ExitReport) -> String {
    if let Some(e) = &exit.error {
        return format!("could not start: {e}");
    }
    match (exit.exit_code, exit.signal, exit.oom_killed) {
        (_, _, true) => {
            "OOMKilled: the kernel's OOM killer ended it at its memory limit".to_owned()
        }
        (_, Some(sig), false) => format!("killed by signal {sig}"),
        (Some(code), None, false) => format!("exited with code {code}"),
        (None, None, false) => "ended".to_owned(),
    }
}

/// Pulls (if needed), prepares and runs the container once, until it exits
/// or a stop or restart is asked for.
async fn run_once(
    rt: &Arc<Runtime>,
    m: &Arc<Managed>,
    control: &mut watch::Receiver<Command_>,
) -> Result<ExitReport, RuntimeError> {
    let w = &m.workload;
    let store = rt.store();
    let reference = w.image.clone();
    let found = {
        let store = Arc::clone(&store);
        let reference = reference.clone();
        tokio::task::spawn_blocking(move || store.resolve(&reference))
            .await
            .map_err(|e| RuntimeError::Shim(format!("image lookup task: {e}")))??
    };
    if found.is_none() {
        m.set(|s| {
            s.state = State::Pulling;
            s.reason = format!("pulling {reference}");
        });
        m.log.push(
            Stream::Stderr,
            &format!("bramble-runtimed: pulling {reference}"),
        );
        let registries = rt.registries().await;
        let report = store.pull(&reference, &registries).await?;
        m.log.push(
            Stream::Stderr,
            &format!(
                "bramble-runtimed: pulled {} ({}, {} bytes fetched)",
                report.image.reference, report.image.digest, report.fetched_bytes
            ),
        );
    }
    let image = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.image(&reference))
            .await
            .map_err(|e| RuntimeError::Shim(format!("image lookup task: {e}")))??
    };
    m.set(|s| {
        s.state = State::Created;
        s.image_digest = image.info.digest.clone();
        s.reason.clear();
    });

    let paths = rt.paths();
    let bundle = paths.bundle(&w.name);
    let dirs = RootfsDirs::new(&bundle, &paths.data(&w.name));
    rootfs::mount_overlay(&dirs, &image.layers)?;
    let result = run_shim(rt, m, control, &bundle, &dirs, &image.config).await;
    rootfs::release(&dirs);
    result
}

async fn run_shim(
    rt: &Arc<Runtime>,
    m: &Arc<Managed>,
    control: &mut watch::Receiver<Command_>,
    bundle: &Path,
    dirs: &RootfsDirs,
    image_config: &oci_spec::image::ImageConfiguration,
) -> Result<ExitReport, RuntimeError> {
    let w = &m.workload;
    let paths = rt.paths();
    let spec = container::build_spec(&SpecInput {
        workload: w,
        image: image_config,
        rootfs: &dirs.target,
        cgroup_path: paths.cgroup_path(&w.name),
        hostname: w.name.clone(),
        resolv_conf: Some(paths.resolv_conf.as_path()).filter(|p| p.exists()),
        hosts: Some(paths.hosts.as_path()).filter(|p| p.exists()),
        default_pids: Some(container::spec::DEFAULT_PIDS_LIMIT),
    })?;
    let config_path = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(&spec)
        .map_err(|e| RuntimeError::Shim(format!("cannot encode the OCI spec: {e}")))?;
    bramble_atomic::write(&config_path, &json, 0o644).map_err(|e| RuntimeError::Io {
        path: config_path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let exit_file = bundle.join("exit.json");
    let started_file = bundle.join("started.json");
    for f in [&exit_file, &started_file] {
        let _ = std::fs::remove_file(f);
    }
    // Ports are taken before the container starts, so a port in use fails
    // the start with its reason; connections wait until it runs.
    let mut published = Published::bind(&w.ports, IpAddr::V6(Ipv6Addr::UNSPECIFIED)).await?;
    let grace = w.stop_grace_period();
    let mut child = Command::new(&paths.shim_exe)
        .arg("shim")
        .arg("--id")
        .arg(&w.name)
        .arg("--bundle")
        .arg(bundle)
        .arg("--state-root")
        .arg(paths.libcontainer_root())
        .arg("--exit-file")
        .arg(&exit_file)
        .arg("--started-file")
        .arg(&started_file)
        .arg("--grace-secs")
        .arg(grace.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RuntimeError::Shim(format!("cannot run {}: {e}", paths.shim_exe.display())))?;
    let shim_pid = child.id();
    let spawned = Instant::now();
    let readers = [
        child
            .stdout
            .take()
            .map(|o| read_lines(o, Stream::Stdout, Arc::clone(&m.log))),
        child
            .stderr
            .take()
            .map(|e| read_lines(e, Stream::Stderr, Arc::clone(&m.log))),
    ];
    m.set(|s| {
        s.state = State::Running;
        s.started_unix = now_ms() / 1000;
    });
    let restart_before = control.borrow().restart;
    let mut pid_known = false;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            changed = control.changed() => {
                let c = *control.borrow();
                if changed.is_err() || c.stop || c.restart != restart_before {
                    if let Some(pid) = shim_pid.and_then(|p| i32::try_from(p).ok()) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                    }
                    let limit = Duration::from_secs(u64::from(grace)) + SHIM_EXTRA;
                    match tokio::time::timeout(limit, child.wait()).await {
                        Ok(status) => break status,
                        Err(_) => {
                            tracing::warn!(container = %w.name, "the shim did not end {limit:?} after SIGTERM; killing it and its container");
                            let _ = container::kill_all(&paths.cgroup_dir(&w.name));
                            let _ = child.start_kill();
                            break child.wait().await;
                        }
                    }
                }
            }
            _ = poll.tick(), if !pid_known => {
                if let Ok(started) = container::read_started(&started_file) {
                    pid_known = true;
                    m.set(|s| s.pid = started.pid);
                    if !w.ports.is_empty()
                        && let Err(e) = publish(&mut published, started.pid)
                    {
                        m.log.push(Stream::Stderr, &format!("bramble-runtimed: {e}"));
                        tracing::warn!(container = %w.name, "{e}");
                    }
                } else if spawned.elapsed() > START_LIMIT {
                    tracing::warn!(container = %w.name, "the shim did not start the container within {START_LIMIT:?}; killing it");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    for r in readers.into_iter().flatten() {
                        r.abort();
                    }
                    return Err(RuntimeError::Shim(format!(
                        "the container was not started within {START_LIMIT:?}"
                    )));
                }
            }
        }
    };
    // The output ends when the last process holding the pipes does. The
    // shim leaves none behind, but a shim that had to be killed may have:
    // then the container's cgroup is killed, and the readers are bounded.
    let cgroup = paths.cgroup_dir(&w.name);
    for mut r in readers.into_iter().flatten() {
        if tokio::time::timeout(OUTPUT_END_WAIT, &mut r).await.is_err() {
            tracing::warn!(container = %w.name, "the container's output is still open after its shim ended; killing its cgroup");
            if let Err(e) = container::kill_all(&cgroup) {
                tracing::warn!(container = %w.name, "cannot kill {}: {e}", cgroup.display());
            }
            if tokio::time::timeout(OUTPUT_END_WAIT, &mut r).await.is_err() {
                r.abort();
            }
        }
    }
    let status = status.map_err(|e| RuntimeError::Shim(format!("waiting for the shim: {e}")))?;
    match container::read_exit(&exit_file) {
        Ok(report) => Ok(report),
        Err(e) => Err(RuntimeError::Shim(format!(
            "the shim ended ({status}) without a report: {e}"
        ))),
    }
}

/// Forwards the published ports into the network namespace of the
/// container whose init is `pid`.
fn publish(published: &mut Published, pid: u32) -> Result<(), RuntimeError> {
    let path = format!("/proc/{pid}/ns/net");
    let netns = std::fs::File::open(&path).map_err(|e| RuntimeError::Io {
        path: path.clone(),
        source: e,
    })?;
    published.serve(netns)
}

fn read_lines(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    log: Arc<ContainerLog>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::with_capacity(256);
        loop {
            let chunk = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(chunk) => chunk,
            };
            let (used, ends) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            line.extend_from_slice(&chunk[..used]);
            reader.consume(used);
            // A line without an end is cut, so a container cannot grow the
            // runtime's memory.
            if ends || line.len() >= crate::logs::MAX_LINE {
                log.push(stream, &String::from_utf8_lossy(&line));
                line.clear();
            }
        }
        if !line.is_empty() {
            log.push(stream, &String::from_utf8_lossy(&line));
        }
    })
}

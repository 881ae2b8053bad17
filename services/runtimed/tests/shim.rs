//! End-to-end runs of the real shim binary on the build host: a busybox
//! container created, run, stopped and removed by `bramble-runtimed shim`.
//!
//! They need root, a static busybox (`make deps` installs Debian's
//! `busybox-static`) and util-linux's `unshare` and `losetup` (a loop device
//! stands for a disk of the host); the shim is this package's
//! own binary, which cargo builds for these tests. Without root each test
//! prints why and passes (`bramble_testkit::skip_unless!`; under `CI=true` it
//! fails instead); as root a missing program fails the test. Each
//! shim runs in a private mount namespace with cgroup2 mounted
//! alone at `/sys/fs/cgroup` (hosts with a hybrid v1/v2 layout have it at
//! `/sys/fs/cgroup/unified` only), so no resource limits are set: such
//! hosts' cgroup2 has no controllers.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::{fs, thread};

use bramble_config::Workload;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

use bramble_runtimed::container::{
    ExitReport, ShimArgs, SpecInput, build_spec, read_exit, read_started, write_config,
};

const BUSYBOX: &str = "/bin/busybox";

fn shim_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bramble-runtimed"))
}

/// As root, the programs these tests need are there (else they fail).
fn require_programs() {
    assert!(
        Path::new(BUSYBOX).exists(),
        "needs {BUSYBOX}: `make deps` installs busybox-static"
    );
    assert!(
        Command::new("unshare").arg("--version").output().is_ok(),
        "needs util-linux's unshare"
    );
}

/// Skips the test (saying why; failing under `CI=true`) without root.
macro_rules! skip_unless_possible {
    () => {
        bramble_testkit::skip_unless!(
            bramble_testkit::is_root(),
            "needs root (mount namespaces, cgroups, container namespaces)"
        );
        require_programs();
    };
}

struct Run {
    dir: tempfile::TempDir,
    args: ShimArgs,
    cgroup_dir: PathBuf,
    child: Child,
    /// The shim's stdout (the container's) as read so far, once
    /// [`Run::wait_output`] has started reading it.
    stdout: Option<(Arc<Mutex<String>>, thread::JoinHandle<()>)>,
}

fn start(id: &str, command: &[&str], grace_secs: u32) -> Run {
    start_with(id, command, grace_secs, true, serde_json::json!({}))
}

/// Prepares a bundle for a busybox workload (`extra` holds more of its
/// fields) and starts the shim on it.
fn start_with(
    id: &str,
    command: &[&str],
    grace_secs: u32,
    exec: bool,
    extra: serde_json::Value,
) -> Run {
    start_in(id, command, grace_secs, exec, extra, |_| {})
}

/// [`start_with`], with `setup` adding to the container's root directory
/// before the shim starts.
fn start_in(
    id: &str,
    command: &[&str],
    grace_secs: u32,
    exec: bool,
    extra: serde_json::Value,
    setup: impl FnOnce(&Path),
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "sleep", "cat", "id", "hostname", "ls", "grep", "head", "mknod", "unshare",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
    setup(&rootfs);

    let mut fields = serde_json::json!({
        "name": id,
        "image": "busybox",
        "command": command,
    });
    if let (Some(map), serde_json::Value::Object(more)) = (fields.as_object_mut(), extra) {
        map.extend(more);
    }
    let workload: Workload = serde_json::from_value(fields).unwrap();
    let resolv = dir.path().join("node-resolv.conf");
    fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
    let image = ImageConfigurationBuilder::default()
        .config(ConfigBuilder::default().build().unwrap())
        .build()
        .unwrap();
    // A parent per test: tests run in parallel and each removes its own.
    let cgroup_path = format!("/bramble-smoke-{}-{id}/{id}", std::process::id());
    let mut input = SpecInput::new(
        &workload,
        &image,
        &rootfs,
        cgroup_path.clone(),
        "smoke".into(),
    );
    input.resolv_conf = Some(&resolv);
    input.hosts = None;
    let spec = build_spec(&input).unwrap();
    write_config(&bundle, &spec).unwrap();

    let args = ShimArgs {
        id: id.into(),
        bundle: bundle.clone(),
        state_root: dir.path().join("state"),
        exit_file: bundle.join("exit.json"),
        started_file: bundle.join("started.json"),
        grace_secs,
    };
    let child = spawn(&args, exec);
    Run {
        dir,
        args,
        cgroup_dir: PathBuf::from(format!("/sys/fs/cgroup/unified{cgroup_path}")),
        child,
        stdout: None,
    }
}

/// Runs the shim in a private mount namespace where cgroup2 is the only
/// thing at /sys/fs/cgroup. With `exec` the shell becomes the shim, so the
/// child is the shim; without, the shim is the shell's child.
fn spawn(args: &ShimArgs, exec: bool) -> Child {
    let run = if exec {
        "exec \"$0\" shim \"$@\""
    } else {
        "\"$0\" shim \"$@\" & wait"
    };
    let script = format!(
        "umount -R /sys/fs/cgroup 2>/dev/null; mount -t cgroup2 cgroup2 /sys/fs/cgroup && {run}"
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(shim_exe())
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

impl Run {
    fn wait_started(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(s) = read_started(&self.args.started_file) {
                return s.pid;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let report = read_exit(&self.args.exit_file);
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("the shim ended ({status}) before starting: {report:?}\n{err}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("the shim wrote no start report in 30 s");
    }

    /// Waits until the container has written `needle` to its stdout.
    fn wait_output(&mut self, needle: &str) {
        let (text, _) = self.stdout.get_or_insert_with(|| {
            let mut out = self.child.stdout.take().unwrap();
            let text = Arc::new(Mutex::new(String::new()));
            let shared = Arc::clone(&text);
            let reader = thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    shared
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            (text, reader)
        });
        let text = Arc::clone(text);
        bramble_testkit::wait_for(
            &format!("{needle:?} on the container's stdout"),
            Duration::from_secs(30),
            || text.lock().unwrap().contains(needle).then_some(()),
        );
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    /// The report of a shim that is not (or no longer) our child.
    fn wait_exit_file(&self) -> ExitReport {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(report) = read_exit(&self.args.exit_file) {
                return report;
            }
            assert!(Instant::now() < deadline, "no exit report in 60 s");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the shim; returns its exit status, the report and its
    /// output (stdout, stderr).
    fn finish(mut self) -> (i32, ExitReport, String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the shim did not end in 60 s");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).unwrap();
        }
        if let Some((text, reader)) = self.stdout.take() {
            reader.join().unwrap();
            out = std::mem::take(&mut *text.lock().unwrap());
        }
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        let report =
            read_exit(&self.args.exit_file).unwrap_or_else(|e| panic!("{e}; shim stderr:\n{err}"));
        // Everything is gone: libcontainer's state and the cgroup.
        assert!(
            !self.args.state_root.join(&self.args.id).exists(),
            "state left behind"
        );
        assert!(
            !self.cgroup_dir.exists(),
            "cgroup {} left behind",
            self.cgroup_dir.display()
        );
        if let Some(parent) = self.cgroup_dir.parent() {
            let _ = fs::remove_dir(parent);
        }
        drop(self.dir);
        (status.code().unwrap_or(-1), report, out, err)
    }
}

#[test]
fn a_container_runs_and_its_exit_is_reported() {
    skip_unless_possible!();
    let mut run = start(
        "smoke-run",
        &[
            "/bin/sh",
            "-c",
            "echo out $(id -u):$(id -g) $(hostname) pid=$$; echo to-stderr >&2; exit 7",
        ],
        5,
    );
    let pid = run.wait_started();
    let (code, report, out, err) = run.finish();
    assert_eq!(code, 0, "shim stderr:\n{err}");
    assert_eq!(report.error, None, "shim stderr:\n{err}");
    assert_eq!(report.pid, Some(pid));
    assert_eq!(report.exit_code, Some(7));
    assert_eq!(report.signal, None);
    assert!(!report.oom_killed);
    // Its own PID namespace (it is 1 there), UTS name, and root user.
    assert_eq!(out, "out 0:0 smoke pid=1\n");
    // Only the container's output: no log lines from the shim.
    assert_eq!(err, "to-stderr\n");
}

#[test]
fn sigterm_reaches_the_container_unblocked() {
    skip_unless_possible!();
    let mut run = start(
        "smoke-term",
        &[
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done",
        ],
        20,
    );
    run.wait_started();
    // The trap is set once the container says so.
    run.wait_output("ready\n");
    let shim = Pid::from_raw(i32::try_from(run.child.id()).unwrap());
    let asked = Instant::now();
    kill(shim, Signal::SIGTERM).unwrap();
    let (code, report, out, err) = run.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(report.exit_code, Some(3), "{report:?}\n{err}");
    assert!(out.contains("got-term"), "{out}");
    // Handled by the trap, not by SIGKILL after the 20 s grace period.
    assert!(asked.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_container_ignoring_sigterm_is_killed_after_the_grace_period() {
    skip_unless_possible!();
    // PID 1 of a namespace without a handler ignores SIGTERM.
    let mut run = start("smoke-kill", &["/bin/sleep", "1000"], 1);
    run.wait_started();
    let shim = Pid::from_raw(i32::try_from(run.child.id()).unwrap());
    let asked = Instant::now();
    kill(shim, Signal::SIGTERM).unwrap();
    let (code, report, _, err) = run.finish();
    let took = asked.elapsed();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        report.signal,
        Some(Signal::SIGKILL as i32),
        "{report:?}\n{err}"
    );
    assert_eq!(report.exit_code, None);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(15),
        "{took:?}"
    );
}

#[test]
fn a_missing_program_is_an_error_report() {
    skip_unless_possible!();
    let run = start("smoke-missing", &["/bin/no-such-program"], 1);
    let (code, report, _, err) = run.finish();
    assert_eq!(code, 1, "{err}");
    let error = report.error.clone().unwrap_or_default();
    println!("error report: {error}\nshim stderr:\n{err}");
    assert!(
        error.contains("no-such-program"),
        "{error}\nshim stderr:\n{err}"
    );
    assert!(!run_started(&report));
}

fn run_started(report: &ExitReport) -> bool {
    report.exit_code.is_some() || report.signal.is_some()
}

#[test]
fn a_leftover_container_is_removed_by_the_next_shim() {
    skip_unless_possible!();
    let mut run = start(
        "smoke-leftover",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 3' TERM; while true; do sleep 0.05; done",
        ],
        5,
    );
    let old_init = run.wait_started();
    // A crashed shim: its container keeps running, its state stays.
    kill(run.pid(), Signal::SIGKILL).unwrap();
    run.child.wait().unwrap();
    assert!(run.args.state_root.join(&run.args.id).exists());
    assert!(process_alive(old_init));

    fs::remove_file(&run.args.started_file).unwrap();
    run.child = spawn(&run.args, true);
    let new_init = run.wait_started();
    assert_ne!(new_init, old_init);
    assert!(!process_alive(old_init), "the old container still runs");
    kill(run.pid(), Signal::SIGTERM).unwrap();
    let (code, report, _, err) = run.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(report.exit_code, Some(3), "{report:?}\n{err}");
}

#[test]
fn the_container_stops_when_the_daemon_dies() {
    skip_unless_possible!();
    // Here the shell is the shim's parent: it plays the daemon.
    let mut run = start_with(
        "smoke-orphan",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 3' TERM; echo ready; while true; do sleep 0.05; done",
        ],
        5,
        false,
        serde_json::json!({}),
    );
    let init = run.wait_started();
    // The trap is set before the daemon dies.
    run.wait_output("ready");
    kill(run.pid(), Signal::SIGKILL).unwrap();
    run.child.wait().unwrap();
    let report = run.wait_exit_file();
    assert_eq!(report.exit_code, Some(3), "{report:?}");
    assert_eq!(report.error, None);
    // The shim removes state and cgroup just before writing the report.
    bramble_testkit::wait_for(
        &format!("the cgroup {} to be removed", run.cgroup_dir.display()),
        Duration::from_secs(10),
        || (!run.cgroup_dir.exists()).then_some(()),
    );
    assert!(
        !run.cgroup_dir.exists(),
        "cgroup {} left behind",
        run.cgroup_dir.display()
    );
    assert!(
        !run.args.state_root.join(&run.args.id).exists(),
        "libcontainer's state left behind"
    );
    // And the container is gone with them: nothing of it still runs.
    assert!(
        !process_alive(init),
        "the container's init {init} still runs"
    );
    let _ = run.finish();
}

/// Running: neither gone nor a zombie.
fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

#[test]
fn user_capabilities_mounts_and_a_read_only_root_apply() {
    skip_unless_possible!();
    let data = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(data.path(), Some(1000), Some(1000)).unwrap();
    let script = "id -u; id -g; cat /etc/resolv.conf; \
                  echo x > /data/f && echo wrote; \
                  (echo y > /f) 2>/dev/null || echo ro-root; \
                  grep CapEff /proc/self/status";
    let mut run = start_with(
        "smoke-user",
        &["/bin/sh", "-c", script],
        5,
        true,
        serde_json::json!({
            "user": "1000:1000",
            "readOnlyRootfs": true,
            "capabilities": ["NET_BIND_SERVICE"],
            "mounts": [{"source": data.path(), "destination": "/data"}],
        }),
    );
    run.wait_started();
    let (code, report, out, err) = run.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(report.exit_code, Some(0), "{report:?}\n{out}\n{err}");
    // Only the asked-for capability survives exec for a non-root user
    // (CAP_NET_BIND_SERVICE is bit 10).
    assert_eq!(
        out,
        "1000\n1000\nnameserver 192.0.2.53\nwrote\nro-root\nCapEff:\t0000000000000400\n"
    );
    assert_eq!(fs::read_to_string(data.path().join("f")).unwrap(), "x\n");
}

/// A loop device over a file holding [`LoopDisk::SECRET`]: a disk the test
/// host can read (its own disk may be out of a sandboxed test's reach),
/// detached when dropped.
struct LoopDisk {
    dev: String,
    major: u64,
    minor: u64,
    _backing: tempfile::NamedTempFile,
}

impl LoopDisk {
    const SECRET: &str = "SECRET-DISK";

    fn new() -> Self {
        use std::os::unix::fs::MetadataExt;
        let backing = tempfile::NamedTempFile::new().unwrap();
        fs::write(backing.path(), Self::SECRET).unwrap();
        backing.as_file().set_len(1 << 20).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let rdev = fs::metadata(&dev).unwrap().rdev();
        let disk = LoopDisk {
            dev,
            major: nix::sys::stat::major(rdev),
            minor: nix::sys::stat::minor(rdev),
            _backing: backing,
        };
        // The host reads it: what keeps a container from it is the policy.
        let mut head = [0u8; 11];
        fs::File::open(&disk.dev)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(&head, Self::SECRET.as_bytes());
        disk
    }

    /// Makes a block device node for it at `path`.
    fn node_at(&self, path: &Path) {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(self.major, self.minor),
        )
        .unwrap();
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A hostile container, as root: a block device node for a disk of the
/// host sits in its root (as an image layer could ship it), and it tries to
/// make one. It can do neither; its own /dev/null works.
#[test]
fn a_device_node_in_the_root_cannot_be_read() {
    skip_unless_possible!();
    let disk = LoopDisk::new();
    let script = format!(
        "head -c 11 /disk 2>/dev/null || echo no-disk; \
         mknod /tmp/d b {} {} 2>/dev/null && echo made || echo no-mknod; \
         echo x > /dev/null && echo null-ok",
        disk.major, disk.minor
    );
    let mut run = start_in(
        "smoke-dev",
        &["/bin/sh", "-c", &script],
        5,
        true,
        serde_json::json!({}),
        |rootfs| disk.node_at(&rootfs.join("disk")),
    );
    run.wait_started();
    let (code, report, out, err) = run.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(report.exit_code, Some(0), "{report:?}\n{out}\n{err}");
    assert_eq!(out, "no-disk\nno-mknod\nnull-ok\n");
}

/// Even given CAP_MKNOD, a container can make only the default devices and
/// open none of the host's: the device policy on its cgroup refuses them.
#[test]
fn cap_mknod_does_not_open_a_host_disk() {
    skip_unless_possible!();
    let disk = LoopDisk::new();
    let script = format!(
        "mknod /dev/n c 1 3 && echo x > /dev/n && echo null-made; \
         mknod /dev/d b {} {} 2>/dev/null && echo made || echo no-mknod; \
         mknod /dev/mem2 c 1 1 2>/dev/null && echo mem || echo no-mem; \
         head -c 11 /disk 2>/dev/null || echo no-disk",
        disk.major, disk.minor
    );
    let mut run = start_in(
        "smoke-mknod",
        &["/bin/sh", "-c", &script],
        5,
        true,
        serde_json::json!({"capabilities": ["MKNOD"]}),
        |rootfs| disk.node_at(&rootfs.join("disk")),
    );
    run.wait_started();
    let (code, report, out, err) = run.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(report.exit_code, Some(0), "{report:?}\n{out}\n{err}");
    assert_eq!(out, "null-made\nno-mknod\nno-mem\nno-disk\n");
}

/// The runtime's seccomp filter: no user namespace (nor any other) from a
/// container; `seccomp: unconfined` lifts it.
#[test]
fn seccomp_refuses_new_namespaces_unless_unconfined() {
    skip_unless_possible!();
    let script = "unshare -U true 2>/dev/null && echo userns || echo no-userns; echo alive";
    for (id, profile, expected) in [
        ("smoke-seccomp", "runtime-default", "no-userns\nalive\n"),
        ("smoke-unconfined", "unconfined", "userns\nalive\n"),
    ] {
        let mut run = start_with(
            id,
            &["/bin/sh", "-c", script],
            5,
            true,
            serde_json::json!({"seccomp": profile}),
        );
        run.wait_started();
        let (code, report, out, err) = run.finish();
        assert_eq!(code, 0, "{err}");
        assert_eq!(report.exit_code, Some(0), "{report:?}\n{out}\n{err}");
        assert_eq!(out, expected, "{profile}");
    }
}

/// A container has a network namespace of its own, holding only its
/// loopback, which is up (the shim brings it up before the program runs);
/// `hostNetwork` shares the node's links instead.
#[test]
fn a_container_sees_only_its_own_loopback_unless_host_network() {
    skip_unless_possible!();
    let script = "cat /sys/class/net/lo/flags; ls /sys/class/net";
    let host_links = fs::read_dir("/sys/class/net").unwrap().count();
    for (id, host_network) in [("smoke-netns", false), ("smoke-hostnet", true)] {
        let mut run = start_with(
            id,
            &["/bin/sh", "-c", script],
            5,
            true,
            serde_json::json!({"hostNetwork": host_network}),
        );
        run.wait_started();
        let (code, report, out, err) = run.finish();
        assert_eq!(code, 0, "{err}");
        assert_eq!(report.exit_code, Some(0), "{report:?}\n{out}\n{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0], "0x9",
            "loopback up (IFF_UP | IFF_LOOPBACK): {out}"
        );
        if host_network {
            assert_eq!(lines.len() - 1, host_links, "the node's links: {out}");
        } else {
            assert_eq!(lines[1..], ["lo"], "{out}");
        }
    }
}

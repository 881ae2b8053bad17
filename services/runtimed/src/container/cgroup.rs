//! Reading and tidying a container's cgroup (v2).
//!
//! libcgroups 0.7's v2 manager, when it creates a container's cgroup, writes
//! `+<controller>` for every controller of the root's `cgroup.controllers`
//! into the `cgroup.subtree_control` of the root and of each ancestor it
//! walks through — best-effort: it ignores failures (a limit then fails when
//! applied), and it skips all of it when the container's cgroup already
//! exists. [`prepare_cgroup_parent`] does the same for `cpu`, `memory` and
//! `pids` but reports failures, so the daemon can call it once at start and
//! say clearly why limits cannot work.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::ContainerError;

/// Where the cgroup v2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The controllers container limits need.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// A container's resource usage, from its cgroup's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupStats {
    /// `memory.current`: bytes in use.
    pub memory_current: u64,
    /// `memory.max`: the limit in bytes, 0 for none (`max`).
    pub memory_max: u64,
    /// `cpu.stat` `usage_usec`: CPU time used, in microseconds.
    pub cpu_usage_usec: u64,
    /// `pids.current`: processes and threads.
    pub pids_current: u64,
}

/// The cgroup directory of `cgroups_path` (`/bramble/web`) under [`CGROUP_ROOT`].
pub fn cgroup_dir(cgroups_path: &Path) -> PathBuf {
    let rel: PathBuf = cgroups_path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    Path::new(CGROUP_ROOT).join(rel)
}

/// Reads a container's usage from its cgroup directory. A controller file
/// that is missing (controller not enabled) reads as 0; an unreadable or
/// malformed one is an error.
pub fn read_stats(cgroup_dir: &Path) -> Result<CgroupStats, ContainerError> {
    if !cgroup_dir.is_dir() {
        return Err(ContainerError::Cgroup {
            path: cgroup_dir.to_owned(),
            reason: "no such cgroup (the container is not running)".into(),
        });
    }
    Ok(CgroupStats {
        memory_current: read_single(&cgroup_dir.join("memory.current"))?.unwrap_or(0),
        memory_max: read_single(&cgroup_dir.join("memory.max"))?.unwrap_or(0),
        cpu_usage_usec: read_keyed(&cgroup_dir.join("cpu.stat"), "usage_usec")?.unwrap_or(0),
        pids_current: read_single(&cgroup_dir.join("pids.current"))?.unwrap_or(0),
    })
}

/// How many processes of the cgroup the kernel's OOM killer killed
/// (`memory.events` `oom_kill`); 0 when the file is missing.
pub fn oom_kills(cgroup_dir: &Path) -> Result<u64, ContainerError> {
    Ok(read_keyed(&cgroup_dir.join("memory.events"), "oom_kill")?.unwrap_or(0))
}

/// Enables the `cpu`, `memory` and `pids` controllers for the children of
/// every cgroup from the hierarchy's root down to `parent`
/// (`/sys/fs/cgroup/bramble`), creating `parent` if needed. Controllers
/// already enabled are left alone.
///
/// A controller the kernel does not offer (absent from `cgroup.controllers`)
/// is only logged: containers without that limit still run, and one asking
/// for it fails to start, naming the cgroup file. A write the kernel refuses
/// is an error: typically `EBUSY` because a cgroup on the way holds
/// processes itself (cgroup v2's "no internal processes" rule), so `parent`
/// must only ever hold the containers' cgroups.
pub fn prepare_cgroup_parent(parent: &Path) -> Result<(), ContainerError> {
    fs::create_dir_all(parent).map_err(ContainerError::io("create cgroup", parent))?;
    let mut chain: Vec<&Path> = parent.ancestors().collect();
    chain.reverse();
    for dir in chain {
        // Directories above the hierarchy's root have no such file.
        if dir.join("cgroup.subtree_control").exists() {
            enable_controllers(dir)?;
        }
    }
    Ok(())
}

fn enable_controllers(dir: &Path) -> Result<(), ContainerError> {
    let available = read_words(&dir.join("cgroup.controllers"))?;
    let enabled = read_words(&dir.join("cgroup.subtree_control"))?;
    for controller in CONTROLLERS {
        if enabled.iter().any(|c| c == controller) {
            continue;
        }
        if !available.iter().any(|c| c == controller) {
            tracing::warn!(
                cgroup = %dir.display(),
                controller,
                available = %available.join(" "),
                "cgroup controller not available: containers with this limit will not start"
            );
            continue;
        }
        let control = dir.join("cgroup.subtree_control");
        fs::write(&control, format!("+{controller}")).map_err(|e| ContainerError::Cgroup {
            path: dir.to_owned(),
            reason: format!(
                "cannot enable {controller} in cgroup.subtree_control: {e}{}",
                if e.raw_os_error() == Some(16) {
                    " (the cgroup holds processes of its own; move them to a child cgroup)"
                } else {
                    ""
                }
            ),
        })?;
    }
    Ok(())
}

/// Sets `memory.swap.max` to 0 when the file exists (swap accounting on).
pub(crate) fn disable_swap(cgroup_dir: &Path) -> Result<(), ContainerError> {
    let path = cgroup_dir.join("memory.swap.max");
    if !path.exists() {
        return Ok(());
    }
    fs::write(&path, "0").map_err(ContainerError::io("write", path))
}

/// SIGKILL to every process of the cgroup and its children at once, through
/// `cgroup.kill` (Linux 5.14): no process can fork its way out, as one can
/// from a kill that walks `cgroup.procs` (a fork bomb refills it as fast
/// as it is read).
/// The file must exist (it is never created: a directory that is not a
/// cgroup, or a kernel before 5.14, gives `NotFound`).
pub fn kill_all(cgroup_dir: &Path) -> io::Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .open(cgroup_dir.join("cgroup.kill"))?
        .write_all(b"1")
}

/// Kills every process of a leftover cgroup and removes it (and its empty
/// children), waiting at most `timeout`. Nothing to do when it is absent.
pub(crate) fn remove_stale(cgroup_dir: &Path, timeout: Duration) -> Result<(), ContainerError> {
    if !cgroup_dir.is_dir() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    if let Err(e) = kill_all(cgroup_dir) {
        tracing::warn!(cgroup = %cgroup_dir.display(), error = %e, "cannot kill the leftover cgroup's processes");
    }
    loop {
        match remove_tree(cgroup_dir) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(ContainerError::Cgroup {
                    path: cgroup_dir.to_owned(),
                    reason: format!("cannot remove the leftover cgroup: {e}"),
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, ContainerError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ContainerError::io("read", path)(e)),
    }
}

fn read_words(path: &Path) -> Result<Vec<String>, ContainerError> {
    Ok(read_optional(path)?
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// A one-value file (`memory.current`); `max` reads as 0.
fn read_single(path: &Path) -> Result<Option<u64>, ContainerError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let value = text.trim();
    if value == "max" {
        return Ok(Some(0));
    }
    value.parse().map(Some).map_err(|_| ContainerError::Parse {
        path: path.to_owned(),
        reason: format!("{value:?} is not a number"),
    })
}

/// The value of `key` in a flat keyed file (`cpu.stat`, `memory.events`).
fn read_keyed(path: &Path, key: &str) -> Result<Option<u64>, ContainerError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(key) {
            let value = parts.next().unwrap_or_default();
            return value.parse().map(Some).map_err(|_| ContainerError::Parse {
                path: path.to_owned(),
                reason: format!("{key} {value:?} is not a number"),
            });
        }
    }
    Ok(Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_usage() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "memory.current", "1048576\n");
        write(d, "memory.max", "67108864\n");
        write(
            d,
            "cpu.stat",
            "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n",
        );
        write(d, "pids.current", "3\n");
        assert_eq!(
            read_stats(d).unwrap(),
            CgroupStats {
                memory_current: 1 << 20,
                memory_max: 64 << 20,
                cpu_usage_usec: 123_456,
                pids_current: 3
            }
        );
    }

    #[test]
    fn max_and_missing_files_read_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "memory.max", "max\n");
        write(d, "cpu.stat", "usage_usec 5\n");
        let s = read_stats(d).unwrap();
        assert_eq!(s.memory_max, 0);
        assert_eq!(s.memory_current, 0);
        assert_eq!(s.pids_current, 0);
        assert_eq!(s.cpu_usage_usec, 5);
    }

    #[test]
    fn malformed_files_and_missing_cgroups_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "memory.current", "lots\n");
        let err = read_stats(d).unwrap_err();
        assert!(err.to_string().contains("memory.current"), "{err}");
        let err = read_stats(&d.join("gone")).unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
    }

    #[test]
    fn counts_oom_kills() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(oom_kills(d).unwrap(), 0);
        write(
            d,
            "memory.events",
            "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n",
        );
        assert_eq!(oom_kills(d).unwrap(), 1);
        write(d, "memory.events", "low 0\n");
        assert_eq!(oom_kills(d).unwrap(), 0);
    }

    #[test]
    fn cgroup_dirs_are_under_the_root() {
        assert_eq!(
            cgroup_dir(Path::new("/bramble/web")),
            Path::new("/sys/fs/cgroup/bramble/web")
        );
        assert_eq!(
            cgroup_dir(Path::new("bramble/../web")),
            Path::new("/sys/fs/cgroup/bramble/web")
        );
    }

    #[test]
    fn prepare_enables_missing_controllers_along_the_path() {
        // Plain files stand in for the kernel's: a write replaces the content.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "cgroup.controllers", "cpuset cpu io memory pids\n");
        write(root, "cgroup.subtree_control", "cpu memory pids\n");
        let parent = root.join("bramble");
        fs::create_dir(&parent).unwrap();
        write(&parent, "cgroup.controllers", "cpu memory pids\n");
        write(&parent, "cgroup.subtree_control", "memory\n");
        prepare_cgroup_parent(&parent).unwrap();
        // Root untouched (all enabled); the parent got the last one written.
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "cpu memory pids\n"
        );
        assert_eq!(
            fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
    }

    #[test]
    fn prepare_skips_unavailable_controllers_and_reports_refused_writes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "cgroup.controllers", "pids\n");
        write(root, "cgroup.subtree_control", "\n");
        prepare_cgroup_parent(&root.join("bramble")).unwrap();
        assert!(root.join("bramble").is_dir());
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        // A control file the kernel refuses writes to.
        let other = root.join("other");
        fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink("/proc/version", other.join("cgroup.subtree_control")).unwrap();
        write(&other, "cgroup.controllers", "cpu\n");
        let err = prepare_cgroup_parent(&other).unwrap_err();
        assert!(err.to_string().contains("cannot enable cpu"), "{err}");
    }

    #[test]
    fn remove_stale_removes_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("web");
        fs::create_dir_all(cg.join("sub/deeper")).unwrap();
        remove_stale(&cg, Duration::from_millis(100)).unwrap();
        assert!(!cg.exists());
        remove_stale(&cg, Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn kill_all_writes_an_existing_cgroup_kill_and_creates_none() {
        let dir = tempfile::tempdir().unwrap();
        let err = kill_all(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!dir.path().join("cgroup.kill").exists());
        write(dir.path(), "cgroup.kill", "0");
        kill_all(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("cgroup.kill")).unwrap(),
            "1"
        );
    }
}

//! The OCI runtime spec (`config.json`) of a workload's container.
//!
//! [`build_spec`] turns a [`Workload`] and its image's configuration into the
//! spec libcontainer runs. What every container gets:
//!
//! - **process**: the command (see [`build_spec`]), the image's environment
//!   overridden by the workload's (`PATH` and `HOME` filled in when missing),
//!   the user, the default capability set ([`DEFAULT_CAPABILITIES`]) plus the
//!   workload's, `noNewPrivileges`; resource limits (`RLIMIT_NOFILE`...)
//!   are runtimed's own, unchanged.
//! - **namespaces**: pid, mount, ipc, uts, cgroup, and network unless the
//!   workload says `hostNetwork`. The container's own network namespace
//!   holds only loopback (the shim brings it up before the program starts):
//!   it sees none of the node's links, so even with `CAP_NET_RAW` it can
//!   neither sniff nor forge traffic on the node's LAN, and it reaches the
//!   outside only through the ports runtimed publishes for it
//!   ([`crate::ports`]). Not user: container root is the node's root, held
//!   in by capabilities, namespaces and the read-only `/sys`.
//! - **mounts**: `/proc`, `/dev` (tmpfs, populated by libcontainer with the
//!   usual null/zero/full/random/urandom/tty/ptmx), `/dev/pts`, `/dev/shm`,
//!   `/dev/mqueue`, `/sys` (read-only), `/sys/fs/cgroup` (the container's own
//!   cgroup, read-only); the node's `/etc/resolv.conf` and `/etc/hosts`
//!   bound read-only when they exist (unless a workload mount claims the same
//!   destination); then the workload's mounts.
//! - runc's default masked and read-only paths under `/proc` and `/sys`.
//! - **seccomp**: the runtime's filter ([`super::seccomp`]), installed by the
//!   shim (libcontainer's own needs the C libseccomp), unless the workload
//!   says `seccomp: unconfined`; the profile travels as an annotation.
//! - **devices**: `/dev` holds only the default devices, the default
//!   capabilities leave out `CAP_MKNOD`, the root is mounted `nodev` (a device
//!   node in an image layer cannot be opened), and the shim puts the device
//!   policy of [`super::devices`] (an eBPF program) on the container's
//!   cgroup, so even a workload given `CAP_MKNOD` cannot open a device
//!   beyond the defaults.
//!
//! Capabilities: bounding, effective and permitted hold the default set plus
//! the workload's `capabilities`. For a non-root user the workload's extra
//! capabilities are also inheritable and ambient, so the process still has
//! them after `execve` (without ambient capabilities a non-root process loses
//! all of them when it executes its program); the default set is not made
//! ambient, so a non-root process runs with only what the workload asked for.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use bramble_config::{SeccompProfile, Workload};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::ContainerError;

/// `PATH` when neither the image nor the workload sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The node's resolver configuration, bound read-only into containers.
pub const NODE_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The node's hosts file, bound read-only into containers.
pub const NODE_HOSTS: &str = "/etc/hosts";

/// Annotation carrying the image's `StopSignal` (for example `SIGQUIT`): the
/// shim sends it instead of SIGTERM when asked to stop the container.
pub const STOP_SIGNAL_ANNOTATION: &str = "org.bramble.stop-signal";

/// Annotation carrying the workload's name.
pub const WORKLOAD_ANNOTATION: &str = "org.bramble.workload";

/// The pids limit of a workload that sets none: a fork bomb stops there
/// instead of exhausting the node's process table.
pub const DEFAULT_PIDS_LIMIT: u32 = 1024;

/// The OOM killer's preference for every container's processes (the
/// node's services run at -900 and below, so workloads are killed first).
pub const CONTAINER_OOM_SCORE_ADJ: i32 = 0;

/// CFS period for CPU limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The capabilities every container has: Docker's and containerd's default
/// set less `CAP_MKNOD` (a workload that needs it asks for it, and the
/// device policy still holds).
pub const DEFAULT_CAPABILITIES: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from containers (runc's defaults).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths containers see read-only (runc's defaults).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What [`build_spec`] needs to know.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// The workload from the machine configuration.
    pub workload: &'a Workload,
    /// The image's configuration (entry point, command, environment, user...).
    pub image: &'a ImageConfiguration,
    /// The container's mounted root filesystem; user and group names are
    /// looked up in its `/etc/passwd` and `/etc/group`.
    pub rootfs: &'a Path,
    /// `linux.cgroupsPath`, for example `/bramble/<name>`.
    pub cgroup_path: String,
    /// The container's host name (its own UTS namespace).
    pub hostname: String,
    /// Node file bound read-only at `/etc/resolv.conf`, if it exists
    /// (normally [`NODE_RESOLV_CONF`]); `None` binds nothing.
    pub resolv_conf: Option<&'a Path>,
    /// Node file bound read-only at `/etc/hosts`, if it exists (normally
    /// [`NODE_HOSTS`]); `None` binds nothing.
    pub hosts: Option<&'a Path>,
    /// The pids limit of a workload that sets none (the node's default,
    /// [`DEFAULT_PIDS_LIMIT`]); `None` leaves such a workload unlimited.
    pub default_pids: Option<u32>,
}

impl<'a> SpecInput<'a> {
    /// An input binding the node's own `/etc/resolv.conf` and `/etc/hosts`.
    pub fn new(
        workload: &'a Workload,
        image: &'a ImageConfiguration,
        rootfs: &'a Path,
        cgroup_path: String,
        hostname: String,
    ) -> Self {
        Self {
            workload,
            image,
            rootfs,
            cgroup_path,
            hostname,
            resolv_conf: Some(Path::new(NODE_RESOLV_CONF)),
            hosts: Some(Path::new(NODE_HOSTS)),
            default_pids: None,
        }
    }
}

/// The OCI runtime spec for a workload's container.
///
/// The root is `rootfs` (relative to the bundle), read-only when the
/// workload says `readOnlyRootfs`.
///
/// The command is the workload's `command` (else the image's `Entrypoint`)
/// followed by the workload's `args` (else the image's `Cmd`; a workload
/// `command` without `args` drops the image's `Cmd`, as Docker does). Empty in
/// the end is an error.
///
/// The user is the workload's `user`, else the image's `User`, else root:
/// `uid[:gid]` numbers or `name[:group]` names (names from the image's
/// `/etc/passwd` and `/etc/group`); without a group the primary group comes
/// from `/etc/passwd` (0 for a uid it does not list) and the supplementary
/// groups are those of `/etc/group` listing the user, as runc does.
pub fn build_spec(input: &SpecInput) -> Result<Spec, ContainerError> {
    let w = input.workload;
    let image = input.image.config().as_ref();

    let args = command(
        w,
        image.and_then(|c| c.entrypoint().as_ref()),
        image.and_then(|c| c.cmd().as_ref()),
    )?;

    let user_text = w
        .user
        .as_deref()
        .or_else(|| image.and_then(|c| c.user().as_deref()))
        .filter(|u| !u.is_empty())
        .unwrap_or("0");
    let user = resolve_user(user_text, input.rootfs)?;

    let env = environment(
        image
            .and_then(|c| c.env().as_ref())
            .map(Vec::as_slice)
            .unwrap_or(&[]),
        w,
        user.home.as_deref(),
    );

    let cwd = match w
        .working_dir
        .as_deref()
        .or_else(|| image.and_then(|c| c.working_dir().as_deref()))
        .filter(|d| !d.is_empty())
    {
        Some(dir) if dir.starts_with('/') => dir.to_owned(),
        Some(dir) => return Err(ContainerError::RelativeWorkingDir(dir.to_owned())),
        None => "/".to_owned(),
    };

    let extra = parse_capabilities(&w.capabilities)?;
    let mut all: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    all.extend(extra.iter().copied());
    let mut caps = LinuxCapabilitiesBuilder::default()
        .bounding(all.clone())
        .effective(all.clone())
        .permitted(all);
    caps = if user.uid == 0 {
        caps.inheritable(Capabilities::new())
            .ambient(Capabilities::new())
    } else {
        caps.inheritable(extra.clone()).ambient(extra)
    };

    let mut user_builder = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        user_builder = user_builder.additional_gids(user.additional_gids.clone());
    }

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user_builder.build()?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(caps.build()?)
        // None: the limits of runtimed (the shim) carry over. Setting a
        // hard limit above them needs CAP_SYS_RESOURCE and fails otherwise.
        .rlimits(Vec::new())
        .no_new_privileges(true)
        // Not runtimed's (a system service's, which the OOM killer spares):
        // under memory pressure a workload goes before the node's daemons.
        .oom_score_adj(CONTAINER_OOM_SCORE_ADJ)
        .build()?;

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .chain((!w.host_network).then_some(LinuxNamespaceType::Network))
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;

    let linux = LinuxBuilder::default()
        .cgroups_path(PathBuf::from(&input.cgroup_path))
        .resources(resources(w, input.default_pids)?)
        .namespaces(namespaces)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect::<Vec<_>>(),
        )
        .build()?;

    let mut annotations = HashMap::new();
    annotations.insert(WORKLOAD_ANNOTATION.to_owned(), w.name.clone());
    annotations.insert(
        super::seccomp::ANNOTATION.to_owned(),
        match w.seccomp {
            SeccompProfile::RuntimeDefault => super::seccomp::RUNTIME_DEFAULT,
            SeccompProfile::Unconfined => super::seccomp::UNCONFINED,
        }
        .to_owned(),
    );
    if let Some(text) = image.and_then(|c| c.stop_signal().as_deref()) {
        match parse_signal(text) {
            Some(sig) => {
                annotations.insert(STOP_SIGNAL_ANNOTATION.to_owned(), sig.as_str().to_owned());
            }
            None => tracing::warn!(
                workload = %w.name,
                stop_signal = text,
                "the image's StopSignal is not a signal; SIGTERM stops the container"
            ),
        }
    }

    let spec = SpecBuilder::default()
        .version(oci_spec::runtime::VERSION)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(w.read_only_rootfs)
                .build()?,
        )
        .hostname(input.hostname.clone())
        .mounts(mounts(input)?)
        .process(process)
        .linux(linux)
        .annotations(annotations)
        .build()?;
    Ok(spec)
}

/// Writes `spec` as `<bundle>/config.json`, atomically.
pub fn write_config(bundle: &Path, spec: &Spec) -> Result<(), ContainerError> {
    let path = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(spec).map_err(|e| ContainerError::Parse {
        path: path.clone(),
        reason: format!("cannot serialize the spec: {e}"),
    })?;
    bramble_atomic::write(&path, &json, 0o644)?;
    Ok(())
}

/// `SIGQUIT`, `QUIT`, `sigquit` or `3` as a signal.
pub fn parse_signal(text: &str) -> Option<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal;
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

fn command(
    w: &Workload,
    entrypoint: Option<&Vec<String>>,
    cmd: Option<&Vec<String>>,
) -> Result<Vec<String>, ContainerError> {
    let entrypoint = entrypoint.map(Vec::as_slice).unwrap_or(&[]);
    let cmd = cmd.map(Vec::as_slice).unwrap_or(&[]);
    let mut args: Vec<String> = if w.command.is_empty() {
        entrypoint.to_vec()
    } else {
        w.command.clone()
    };
    if !w.args.is_empty() {
        args.extend(w.args.iter().cloned());
    } else if w.command.is_empty() {
        args.extend(cmd.iter().cloned());
    }
    if args.first().is_none_or(|a| a.is_empty()) {
        return Err(ContainerError::NoCommand {
            workload: w.name.clone(),
        });
    }
    Ok(args)
}

fn environment(image_env: &[String], w: &Workload, home: Option<&str>) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |key: &str, value: &str, env: &mut Vec<(String, String)>| match env
        .iter_mut()
        .find(|(k, _)| k == key)
    {
        Some(slot) => slot.1 = value.to_owned(),
        None => env.push((key.to_owned(), value.to_owned())),
    };
    for entry in image_env {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        if !key.is_empty() {
            set(key, value, &mut env);
        }
    }
    for (key, value) in &w.env {
        set(key, value, &mut env);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".to_owned(), home.unwrap_or("/").to_owned()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn parse_capabilities(names: &[String]) -> Result<Capabilities, ContainerError> {
    names
        .iter()
        .map(|name| {
            let upper = name.trim().to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            let known = !bare.is_empty()
                && !bare.starts_with("CAP_")
                && bare.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
            known
                .then(|| {
                    serde_json::from_value::<Capability>(serde_json::Value::String(format!(
                        "CAP_{bare}"
                    )))
                    .ok()
                })
                .flatten()
                .ok_or_else(|| ContainerError::UnknownCapability(name.clone()))
        })
        .collect()
}

fn resources(
    w: &Workload,
    default_pids: Option<u32>,
) -> Result<oci_spec::runtime::LinuxResources, ContainerError> {
    let r = &w.resources;
    let mut builder = LinuxResourcesBuilder::default();
    if let Some(text) = &r.memory {
        let bytes = r
            .memory_bytes()
            .and_then(|b| i64::try_from(b).ok())
            .ok_or_else(|| ContainerError::InvalidResource {
                field: "memory",
                value: text.clone(),
                reason: "not a size such as 64Mi".into(),
            })?;
        // swap = limit: memory plus swap may not exceed the limit, so the
        // container cannot swap past it. (libcgroups writes nothing to
        // memory.swap.max for a difference of zero; the shim writes 0 there.)
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    if let Some(text) = &r.cpu {
        let quota = r
            .cpu_millis()
            .and_then(|m| m.checked_mul(CPU_PERIOD_US / 1000))
            .and_then(|q| i64::try_from(q).ok())
            .ok_or_else(|| ContainerError::InvalidResource {
                field: "cpu",
                value: text.clone(),
                reason: "not a CPU amount such as 500m or 1.5".into(),
            })?;
        builder = builder.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    if let Some(pids) = r.pids.or(default_pids) {
        if pids == 0 {
            return Err(ContainerError::InvalidResource {
                field: "pids",
                value: pids.to_string(),
                reason: format!(
                    "must be at least 1 (leave it out for the default, {DEFAULT_PIDS_LIMIT})"
                ),
            });
        }
        builder = builder.pids(LinuxPidsBuilder::default().limit(i64::from(pids)).build()?);
    }
    Ok(builder.build()?)
}

fn mount(
    destination: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, ContainerError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()?)
}

fn mounts(input: &SpecInput) -> Result<Vec<Mount>, ContainerError> {
    let w = input.workload;
    let mut list = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ];

    let claimed: HashSet<&str> = w
        .mounts
        .iter()
        .map(|m| m.destination.trim_end_matches('/'))
        .collect();
    for (dest, host) in [
        ("/etc/resolv.conf", input.resolv_conf),
        ("/etc/hosts", input.hosts),
    ] {
        let Some(host) = host else { continue };
        if claimed.contains(dest) || !host.exists() {
            continue;
        }
        let source = host.to_str().ok_or_else(|| ContainerError::InvalidMount {
            destination: dest.to_owned(),
            reason: format!("the node path {host:?} is not UTF-8"),
        })?;
        list.push(mount(dest, "bind", source, &["rbind", "ro"])?);
    }

    for m in &w.mounts {
        if !m.destination.starts_with('/') {
            return Err(ContainerError::InvalidMount {
                destination: m.destination.clone(),
                reason: "the destination is not an absolute path".into(),
            });
        }
        if !Path::new(&m.source).exists() {
            return Err(ContainerError::MountSourceMissing {
                source_path: m.source.clone(),
                destination: m.destination.clone(),
            });
        }
        let rw = if m.read_only { "ro" } else { "rw" };
        list.push(mount(&m.destination, "bind", &m.source, &["rbind", rw])?);
    }
    Ok(list)
}

/// A user specification resolved against the image's user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd`, when the user is listed.
    pub home: Option<String>,
}

#[derive(Debug)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            match f.as_slice() {
                [name, _, uid, gid, _, home, ..] if !name.is_empty() => Some(PasswdEntry {
                    name: (*name).to_owned(),
                    uid: uid.parse().ok()?,
                    gid: gid.parse().ok()?,
                    home: (*home).to_owned(),
                }),
                _ => None,
            }
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            match f.as_slice() {
                [name, _, gid, rest @ ..] if !name.is_empty() => Some(GroupEntry {
                    name: (*name).to_owned(),
                    gid: gid.parse().ok()?,
                    members: rest
                        .first()
                        .map(|m| {
                            m.split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// Largest `/etc/passwd` or `/etc/group` read from an image.
pub(crate) const MAX_USER_DB_BYTES: u64 = 1 << 20;

/// Reads a user database of the image (`etc/passwd`, `etc/group`): only a
/// regular file of at most [`MAX_USER_DB_BYTES`], itself not a symbolic
/// link (the directories on its way resolve inside `rootfs` only). `None`
/// when it does not exist.
fn read_image_file(rootfs: &Path, rel: &str) -> Result<Option<String>, ContainerError> {
    let shown = rootfs.join(rel);
    let refuse = |reason: String| ContainerError::Parse {
        path: shown.clone(),
        reason: format!(
            "{reason}; the image's user database is read only from a regular file of at most {MAX_USER_DB_BYTES} bytes"
        ),
    };
    if let Ok(dir) = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) && let Ok(fd) = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) && rustix::fs::fstat(&fd)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
    {
        return Err(refuse("it is a symbolic link".to_owned()));
    }
    let Some(file) = open_in_root(rootfs, Path::new(rel))? else {
        return Ok(None);
    };
    let size = file
        .metadata()
        .map_err(ContainerError::io("stat", &shown))?
        .len();
    if size > MAX_USER_DB_BYTES {
        return Err(refuse(format!("it is {size} bytes")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_USER_DB_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ContainerError::io("read", &shown))?;
    if bytes.len() as u64 > MAX_USER_DB_BYTES {
        return Err(refuse(format!("it grew past {MAX_USER_DB_BYTES} bytes")));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Opens the regular file `path` inside `root` for reading, the kernel
/// resolving it and its symbolic links as if `root` were `/` (`openat2` with
/// `RESOLVE_IN_ROOT`): absolute link targets and `..` never leave `root`, and
/// a rename racing the lookup cannot move it out either. `None` when the file
/// or a directory on the way does not exist.
///
/// The file is first opened with `O_PATH`, which opens nothing on the inode,
/// so a FIFO or device node placed there (a container's upper layer can hold
/// one) is refused before it is opened for reading; the regular file is then
/// reopened for reading through `/proc/self/fd`, the same inode, not
/// resolved again.
pub(crate) fn open_in_root(root: &Path, path: &Path) -> Result<Option<File>, ContainerError> {
    let shown = root.join(path.strip_prefix("/").unwrap_or(path));
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ContainerError::io("open", root)(e.into()))?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let mut races = 0;
    let found = loop {
        match rustix::fs::openat2(
            &dir,
            path,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => break fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
            // The kernel could not rule out that a concurrent rename let
            // `..` escape; the lookup may be retried.
            Err(Errno::AGAIN) if races < 8 => races += 1,
            Err(Errno::LOOP) => {
                return Err(ContainerError::Parse {
                    path: shown,
                    reason: "too many levels of symbolic links".into(),
                });
            }
            Err(e) => return Err(ContainerError::io("open", shown)(e.into())),
        }
    };
    let stat =
        rustix::fs::fstat(&found).map_err(|e| ContainerError::io("stat", &shown)(e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(ContainerError::Parse {
            path: shown,
            reason: "not a regular file".into(),
        });
    }
    let reopen = format!("/proc/self/fd/{}", found.as_raw_fd());
    let file = File::open(&reopen).map_err(ContainerError::io("open", shown))?;
    Ok(Some(file))
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
}

/// Resolves `uid[:gid]` / `name[:group]` against the image's user database.
pub(crate) fn resolve_user(text: &str, rootfs: &Path) -> Result<ResolvedUser, ContainerError> {
    let invalid = || ContainerError::InvalidUser(text.to_owned());
    let (user_part, group_part) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    if !(is_number(user_part) || valid_name(user_part)) {
        return Err(invalid());
    }
    if let Some(g) = group_part
        && !(is_number(g) || valid_name(g))
    {
        return Err(invalid());
    }

    let passwd_text = read_image_file(rootfs, "etc/passwd")?;
    let passwd = passwd_text.as_deref().map(parse_passwd).unwrap_or_default();

    let entry = if is_number(user_part) {
        let uid: u32 = user_part.parse().map_err(|_| invalid())?;
        passwd.iter().find(|e| e.uid == uid)
    } else {
        Some(passwd.iter().find(|e| e.name == user_part).ok_or_else(|| {
            ContainerError::UserNotFound {
                user: user_part.to_owned(),
                file_missing: passwd_text.is_none(),
            }
        })?)
    };
    let uid = match entry {
        Some(e) => e.uid,
        None => user_part.parse().map_err(|_| invalid())?,
    };

    // The group database is needed for a group name, or for the
    // supplementary groups of a listed user.
    let need_groups =
        group_part.is_some_and(|g| !is_number(g)) || (group_part.is_none() && entry.is_some());
    let (group_text, groups) = if need_groups {
        let text = read_image_file(rootfs, "etc/group")?;
        let groups = text.as_deref().map(parse_group).unwrap_or_default();
        (text, groups)
    } else {
        (None, Vec::new())
    };

    let (gid, additional_gids) = match group_part {
        Some(g) if is_number(g) => (g.parse().map_err(|_| invalid())?, Vec::new()),
        Some(g) => {
            let group = groups.iter().find(|e| e.name == g).ok_or_else(|| {
                ContainerError::GroupNotFound {
                    group: g.to_owned(),
                    file_missing: group_text.is_none(),
                }
            })?;
            (group.gid, Vec::new())
        }
        None => {
            let gid = entry.map_or(0, |e| e.gid);
            let mut extra: Vec<u32> = Vec::new();
            if let Some(e) = entry {
                for g in &groups {
                    if g.members.contains(&e.name) && g.gid != gid && !extra.contains(&g.gid) {
                        extra.push(g.gid);
                    }
                }
            }
            (gid, extra)
        }
    };

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_config::{Resources, WorkloadMount};
    use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};
    use std::fs;

    fn workload() -> Workload {
        serde_json::from_value(serde_json::json!({"name": "web", "image": "nginx"})).unwrap()
    }

    fn image(f: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> ImageConfiguration {
        ImageConfigurationBuilder::default()
            .config(f(ConfigBuilder::default()).build().unwrap())
            .build()
            .unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("rootfs/etc")).unwrap();
            fs::write(
                dir.path().join("rootfs/etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\n\
                 daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                 # a comment\n\
                 nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\n\
                 broken line\n",
            )
            .unwrap();
            fs::write(
                dir.path().join("rootfs/etc/group"),
                "root:x:0:\n\
                 wheel:x:10:root,nginx\n\
                 nginx:x:101:\n\
                 www-data:x:33:nginx\n\
                 adm:x:4: root , daemon\n",
            )
            .unwrap();
            fs::write(dir.path().join("resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
            fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
            Self { dir }
        }

        fn rootfs(&self) -> PathBuf {
            self.dir.path().join("rootfs")
        }

        fn build(&self, w: &Workload, img: &ImageConfiguration) -> Result<Spec, ContainerError> {
            self.build_with(w, img, None)
        }

        /// [`Fixture::build`] with the node's default pids limit.
        fn build_with(
            &self,
            w: &Workload,
            img: &ImageConfiguration,
            default_pids: Option<u32>,
        ) -> Result<Spec, ContainerError> {
            let rootfs = self.rootfs();
            let resolv = self.dir.path().join("resolv.conf");
            let hosts = self.dir.path().join("hosts");
            let input = SpecInput {
                workload: w,
                image: img,
                rootfs: &rootfs,
                cgroup_path: format!("/bramble/{}", w.name),
                hostname: "node-1".into(),
                resolv_conf: Some(&resolv),
                hosts: Some(&hosts),
                default_pids,
            };
            build_spec(&input)
        }
    }

    fn process(spec: &Spec) -> &oci_spec::runtime::Process {
        spec.process().as_ref().unwrap()
    }

    fn args(spec: &Spec) -> Vec<String> {
        process(spec).args().clone().unwrap()
    }

    fn env(spec: &Spec) -> Vec<String> {
        process(spec).env().clone().unwrap()
    }

    fn nginx_image() -> ImageConfiguration {
        image(|c| {
            c.entrypoint(strings(&["/docker-entrypoint.sh"]))
                .cmd(strings(&["nginx", "-g", "daemon off;"]))
        })
    }

    #[test]
    fn args_come_from_the_image_by_default() {
        let f = Fixture::new();
        let spec = f.build(&workload(), &nginx_image()).unwrap();
        assert_eq!(
            args(&spec),
            strings(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
        );
    }

    #[test]
    fn workload_args_replace_the_image_cmd_only() {
        let f = Fixture::new();
        let mut w = workload();
        w.args = strings(&["nginx", "-t"]);
        let spec = f.build(&w, &nginx_image()).unwrap();
        assert_eq!(
            args(&spec),
            strings(&["/docker-entrypoint.sh", "nginx", "-t"])
        );
    }

    #[test]
    fn workload_command_drops_the_image_entrypoint_and_cmd() {
        let f = Fixture::new();
        let mut w = workload();
        w.command = strings(&["/bin/sh", "-c"]);
        let spec = f.build(&w, &nginx_image()).unwrap();
        assert_eq!(args(&spec), strings(&["/bin/sh", "-c"]));
        w.args = strings(&["echo hi"]);
        let spec = f.build(&w, &nginx_image()).unwrap();
        assert_eq!(args(&spec), strings(&["/bin/sh", "-c", "echo hi"]));
    }

    #[test]
    fn image_cmd_alone_is_used() {
        let f = Fixture::new();
        let spec = f
            .build(&workload(), &image(|c| c.cmd(strings(&["/bin/app"]))))
            .unwrap();
        assert_eq!(args(&spec), strings(&["/bin/app"]));
    }

    #[test]
    fn nothing_to_run_is_an_error_naming_the_workload() {
        let f = Fixture::new();
        let err = f.build(&workload(), &image(|c| c)).unwrap_err();
        assert!(matches!(err, ContainerError::NoCommand { .. }), "{err}");
        assert!(err.to_string().contains("\"web\""), "{err}");
        // An image without any config at all.
        let bare = ImageConfigurationBuilder::default().build().unwrap();
        assert!(matches!(
            f.build(&workload(), &bare),
            Err(ContainerError::NoCommand { .. })
        ));
    }

    #[test]
    fn env_merges_image_and_workload_with_defaults() {
        let f = Fixture::new();
        let img = image(|c| {
            c.cmd(strings(&["app"]))
                .env(strings(&["A=1", "B=image", "NOVALUE", "C=x=y"]))
        });
        let mut w = workload();
        w.env.insert("B".into(), "workload".into());
        w.env.insert("D".into(), "4".into());
        let spec = f.build(&w, &img).unwrap();
        assert_eq!(
            env(&spec),
            strings(&[
                "A=1",
                "B=workload",
                "NOVALUE=",
                "C=x=y",
                "D=4",
                &format!("PATH={DEFAULT_PATH}"),
                "HOME=/root"
            ])
        );
    }

    #[test]
    fn env_keeps_image_path_and_home() {
        let f = Fixture::new();
        let img = image(|c| {
            c.cmd(strings(&["app"]))
                .env(strings(&["PATH=/opt/bin", "HOME=/data"]))
        });
        let spec = f.build(&workload(), &img).unwrap();
        assert_eq!(env(&spec), strings(&["PATH=/opt/bin", "HOME=/data"]));
    }

    #[test]
    fn cwd_prefers_workload_then_image_then_root() {
        let f = Fixture::new();
        let mut w = workload();
        let img = image(|c| c.cmd(strings(&["app"])).working_dir("/srv"));
        assert_eq!(
            process(&f.build(&w, &img).unwrap()).cwd(),
            Path::new("/srv")
        );
        w.working_dir = Some("/work".into());
        assert_eq!(
            process(&f.build(&w, &img).unwrap()).cwd(),
            Path::new("/work")
        );
        let img = image(|c| c.cmd(strings(&["app"])));
        assert_eq!(
            process(&f.build(&workload(), &img).unwrap()).cwd(),
            Path::new("/")
        );
        w.working_dir = Some("relative".into());
        assert!(
            matches!(f.build(&w, &img), Err(ContainerError::RelativeWorkingDir(d)) if d == "relative")
        );
    }

    fn user_of(
        f: &Fixture,
        user: Option<&str>,
        image_user: Option<&str>,
    ) -> Result<(u32, u32, Vec<u32>), ContainerError> {
        let mut w = workload();
        w.user = user.map(str::to_owned);
        let img = image(|c| {
            let c = c.cmd(strings(&["app"]));
            match image_user {
                Some(u) => c.user(u),
                None => c,
            }
        });
        let spec = f.build(&w, &img)?;
        let u = process(&spec).user();
        Ok((
            u.uid(),
            u.gid(),
            u.additional_gids().clone().unwrap_or_default(),
        ))
    }

    #[test]
    fn users_resolve_by_number_and_name() {
        let f = Fixture::new();
        // Default: root, with root's supplementary groups.
        assert_eq!(user_of(&f, None, None).unwrap(), (0, 0, vec![10, 4]));
        assert_eq!(user_of(&f, None, Some("")).unwrap(), (0, 0, vec![10, 4]));
        // The image's user, and the workload's over it.
        assert_eq!(
            user_of(&f, None, Some("nginx")).unwrap(),
            (101, 101, vec![10, 33])
        );
        assert_eq!(
            user_of(&f, Some("daemon"), Some("nginx")).unwrap(),
            (1, 1, vec![4])
        );
        // Numbers: listed uid takes its group; unlisted uid gets gid 0.
        assert_eq!(
            user_of(&f, Some("101"), None).unwrap(),
            (101, 101, vec![10, 33])
        );
        assert_eq!(user_of(&f, Some("5000"), None).unwrap(), (5000, 0, vec![]));
        assert_eq!(
            user_of(&f, Some("5000:6000"), None).unwrap(),
            (5000, 6000, vec![])
        );
        // An explicit group: no supplementary groups (as runc).
        assert_eq!(
            user_of(&f, Some("nginx:www-data"), None).unwrap(),
            (101, 33, vec![])
        );
        assert_eq!(
            user_of(&f, Some("nginx:7"), None).unwrap(),
            (101, 7, vec![])
        );
        assert_eq!(
            user_of(&f, Some("1000:wheel"), None).unwrap(),
            (1000, 10, vec![])
        );
    }

    #[test]
    fn home_comes_from_passwd() {
        let f = Fixture::new();
        let mut w = workload();
        w.user = Some("nginx".into());
        let spec = f.build(&w, &image(|c| c.cmd(strings(&["app"])))).unwrap();
        assert!(env(&spec).contains(&"HOME=/var/cache/nginx".to_owned()));
        w.user = Some("4242".into());
        let spec = f.build(&w, &image(|c| c.cmd(strings(&["app"])))).unwrap();
        assert!(env(&spec).contains(&"HOME=/".to_owned()));
    }

    #[test]
    fn unknown_users_and_groups_are_named() {
        let f = Fixture::new();
        let err = user_of(&f, Some("postgres"), None).unwrap_err();
        assert!(
            matches!(&err, ContainerError::UserNotFound { user, file_missing: false } if user == "postgres"),
            "{err}"
        );
        assert!(err.to_string().contains("\"postgres\""), "{err}");
        let err = user_of(&f, Some("nginx:staff"), None).unwrap_err();
        assert!(
            matches!(&err, ContainerError::GroupNotFound { group, .. } if group == "staff"),
            "{err}"
        );
        for bad in ["a b", "nginx:", ":1", "x:y:z", "9999999999999"] {
            let err = user_of(&f, Some(bad), None).unwrap_err();
            assert!(
                matches!(err, ContainerError::InvalidUser(_)),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_passwd_is_reported_for_names_only() {
        let f = Fixture::new();
        fs::remove_file(f.rootfs().join("etc/passwd")).unwrap();
        fs::remove_file(f.rootfs().join("etc/group")).unwrap();
        assert_eq!(user_of(&f, None, None).unwrap(), (0, 0, vec![]));
        assert_eq!(user_of(&f, Some("33:33"), None).unwrap(), (33, 33, vec![]));
        let err = user_of(&f, Some("nginx"), None).unwrap_err();
        assert!(
            err.to_string().contains("the image has no such file"),
            "{err}"
        );
        let err = user_of(&f, Some("0:staff"), None).unwrap_err();
        assert!(
            matches!(
                err,
                ContainerError::GroupNotFound {
                    file_missing: true,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// Where `open_in_root` landed: the opened file's path, from the kernel.
    fn resolved(root: &Path, path: &str) -> PathBuf {
        let file = open_in_root(root, Path::new(path)).unwrap().unwrap();
        fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap()
    }

    #[test]
    fn passwd_symlinks_stay_inside_the_rootfs() {
        let f = Fixture::new();
        let root = f.rootfs();
        let real_root = fs::canonicalize(&root).unwrap();
        // An absolute link resolves inside the rootfs, never on the node.
        fs::create_dir_all(root.join("data")).unwrap();
        fs::rename(root.join("etc/passwd"), root.join("data/passwd")).unwrap();
        std::os::unix::fs::symlink("/data/passwd", root.join("etc/passwd")).unwrap();
        // (The user database itself is never read through a link.)
        let err = user_of(&f, Some("nginx"), None).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(resolved(&root, "etc/passwd"), real_root.join("data/passwd"));
        // An absolute link to a node file that exists outside the rootfs
        // finds nothing inside it.
        let outside = f.dir.path().join("resolv.conf");
        fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/passwd")).unwrap();
        assert!(
            open_in_root(&root, Path::new("etc/passwd"))
                .unwrap()
                .is_none()
        );
        // `..` cannot climb out either: this points at the fixture's
        // resolv.conf outside the rootfs if followed naively.
        fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../resolv.conf", root.join("etc/passwd")).unwrap();
        assert!(
            open_in_root(&root, Path::new("etc/passwd"))
                .unwrap()
                .is_none()
        );
        fs::write(root.join("resolv.conf"), "inside\n").unwrap();
        assert_eq!(resolved(&root, "etc/passwd"), real_root.join("resolv.conf"));
        assert!(read_image_file(&root, "etc/passwd").is_err());
        // Nor can `..` in the path asked for, or in a link's middle.
        assert_eq!(
            resolved(&root, "/../../etc/../../resolv.conf"),
            real_root.join("resolv.conf")
        );
        fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/data/../../../data/passwd", root.join("etc/passwd")).unwrap();
        assert_eq!(resolved(&root, "etc/passwd"), real_root.join("data/passwd"));
        // A directory link pointing out is followed inside as well.
        fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
        assert_eq!(
            resolved(&root, "up/data/passwd"),
            real_root.join("data/passwd")
        );
        // A loop is an error, not a hang.
        std::os::unix::fs::symlink("passwd", root.join("etc/passwd")).unwrap();
        let err = open_in_root(&root, Path::new("/etc/passwd")).unwrap_err();
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }

    #[test]
    fn user_databases_are_regular_files_of_bounded_size() {
        let f = Fixture::new();
        let root = f.rootfs();
        let passwd = root.join("etc/passwd");
        // A link to the node's /dev/zero (which inside the root is the
        // image's, here a regular file) or to a file of the image.
        fs::create_dir_all(root.join("dev")).unwrap();
        fs::write(root.join("dev/zero"), "root:x:0:0::/:/bin/sh\n").unwrap();
        for target in ["/dev/zero", "/etc/group"] {
            fs::remove_file(&passwd).unwrap();
            std::os::unix::fs::symlink(target, &passwd).unwrap();
            for user in [Some("nginx"), None] {
                let err = user_of(&f, user, None).unwrap_err();
                let msg = err.to_string();
                assert!(
                    msg.contains(&passwd.display().to_string())
                        && msg.contains("it is a symbolic link")
                        && msg.contains("read only from a regular file of at most 1048576 bytes"),
                    "{msg}"
                );
            }
        }
        // A file past the bound, however the space is spent.
        fs::remove_file(&passwd).unwrap();
        let mut big = String::from("root:x:0:0:root:/root:/bin/sh\n");
        big.push_str(&"#".repeat(MAX_USER_DB_BYTES as usize));
        fs::write(&passwd, &big).unwrap();
        let err = user_of(&f, Some("root"), None).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("it is {} bytes", big.len())),
            "{err}"
        );
        // Exactly at the bound is read.
        big.truncate(MAX_USER_DB_BYTES as usize);
        fs::write(&passwd, &big).unwrap();
        assert_eq!(user_of(&f, Some("root"), None).unwrap().0, 0);
        // /etc/group the same, when a group name needs it.
        let group = root.join("etc/group");
        fs::remove_file(&group).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &group).unwrap();
        let err = user_of(&f, Some("0:wheel"), None).unwrap_err();
        assert!(
            err.to_string().contains(&group.display().to_string())
                && err.to_string().contains("symbolic link"),
            "{err}"
        );
    }

    #[test]
    fn only_regular_files_of_the_image_are_read() {
        let f = Fixture::new();
        let root = f.rootfs();
        fs::remove_file(root.join("etc/passwd")).unwrap();
        fs::create_dir(root.join("etc/passwd")).unwrap();
        let err = open_in_root(&root, Path::new("etc/passwd")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // A FIFO would block the reader forever, a device node could be the
        // node's: neither is opened for reading. (On a thread: the test fails
        // rather than hangs should the FIFO be opened.)
        fs::remove_dir(root.join("etc/passwd")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("etc/passwd"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let fifo_root = root.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_image_file(&fifo_root, "etc/passwd").map(|_| ()));
        });
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the FIFO was opened for reading")
            .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // A missing directory on the way is a missing file.
        assert!(
            open_in_root(&root, Path::new("nope/passwd"))
                .unwrap()
                .is_none()
        );
        assert!(
            open_in_root(&root, Path::new("etc/group/x"))
                .unwrap()
                .is_none()
        );
    }

    fn caps(spec: &Spec) -> oci_spec::runtime::LinuxCapabilities {
        process(spec).capabilities().clone().unwrap()
    }

    #[test]
    fn capabilities_are_the_default_set_plus_the_workloads() {
        let f = Fixture::new();
        let img = image(|c| c.cmd(strings(&["app"])));
        let spec = f.build(&workload(), &img).unwrap();
        let c = caps(&spec);
        let default: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        assert_eq!(c.bounding().as_ref(), Some(&default));
        assert!(
            !default.contains(&Capability::Mknod),
            "CAP_MKNOD only on request"
        );
        assert_eq!(c.effective().as_ref(), Some(&default));
        assert_eq!(c.permitted().as_ref(), Some(&default));
        assert_eq!(c.ambient().as_ref(), Some(&Capabilities::new()));
        assert_eq!(process(&spec).no_new_privileges(), Some(true));
        assert_eq!(
            process(&spec).oom_score_adj(),
            Some(CONTAINER_OOM_SCORE_ADJ)
        );

        let mut w = workload();
        w.capabilities = strings(&["NET_ADMIN", "CAP_SYS_TIME", "cap_sys_nice"]);
        let c = caps(&f.build(&w, &img).unwrap());
        let bounding = c.bounding().clone().unwrap();
        for cap in [
            Capability::NetAdmin,
            Capability::SysTime,
            Capability::SysNice,
            Capability::Chown,
        ] {
            assert!(bounding.contains(&cap), "{cap:?}");
        }
        assert_eq!(bounding.len(), 16);
        // Root needs no ambient capabilities.
        assert_eq!(c.ambient().as_ref(), Some(&Capabilities::new()));

        // A non-root user keeps (only) the extra ones across exec.
        w.user = Some("nginx".into());
        let c = caps(&f.build(&w, &img).unwrap());
        let extra: Capabilities = [
            Capability::NetAdmin,
            Capability::SysTime,
            Capability::SysNice,
        ]
        .into_iter()
        .collect();
        assert_eq!(c.ambient().as_ref(), Some(&extra));
        assert_eq!(c.inheritable().as_ref(), Some(&extra));
    }

    #[test]
    fn unknown_capabilities_are_named() {
        let f = Fixture::new();
        for bad in ["NET_ADMINS", "CAP_", "", "CAP_CAP_NET_ADMIN", "net-admin"] {
            let mut w = workload();
            w.capabilities = strings(&["KILL", bad]);
            let err = f
                .build(&w, &image(|c| c.cmd(strings(&["app"]))))
                .unwrap_err();
            assert!(
                matches!(&err, ContainerError::UnknownCapability(n) if n == bad),
                "{bad}: {err}"
            );
        }
    }

    fn linux(spec: &Spec) -> &oci_spec::runtime::Linux {
        spec.linux().as_ref().unwrap()
    }

    #[test]
    fn limits_become_cgroup_resources() {
        let f = Fixture::new();
        let img = image(|c| c.cmd(strings(&["app"])));
        let mut w = workload();
        w.resources = Resources {
            memory: Some("64Mi".into()),
            cpu: Some("500m".into()),
            pids: Some(100),
        };
        let spec = f.build(&w, &img).unwrap();
        let l = linux(&spec);
        assert_eq!(l.cgroups_path().as_deref(), Some(Path::new("/bramble/web")));
        let r = l.resources().as_ref().unwrap();
        let mem = r.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(mem.swap(), Some(64 << 20));
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 100);

        w.resources.cpu = Some("1.5".into());
        let spec = f.build(&w, &img).unwrap();
        let cpu = linux(&spec)
            .resources()
            .as_ref()
            .unwrap()
            .cpu()
            .clone()
            .unwrap();
        assert_eq!(cpu.quota(), Some(150_000));
    }

    #[test]
    fn no_limits_means_no_resources() {
        let f = Fixture::new();
        let spec = f
            .build(&workload(), &image(|c| c.cmd(strings(&["app"]))))
            .unwrap();
        let r = linux(&spec).resources().clone().unwrap();
        assert!(r.memory().is_none() && r.cpu().is_none() && r.pids().is_none());
        assert!(r.devices().as_ref().is_none_or(Vec::is_empty));
    }

    #[test]
    fn the_node_default_pids_limit_applies_unless_the_workload_sets_one() {
        let f = Fixture::new();
        let img = image(|c| c.cmd(strings(&["app"])));
        let mut w = workload();
        let limit = |w: &Workload| {
            let spec = f.build_with(w, &img, Some(DEFAULT_PIDS_LIMIT)).unwrap();
            linux(&spec)
                .resources()
                .as_ref()
                .and_then(|r| r.pids().as_ref().map(|p| p.limit()))
        };
        assert_eq!(limit(&w), Some(i64::from(DEFAULT_PIDS_LIMIT)));
        w.resources.pids = Some(4096);
        assert_eq!(limit(&w), Some(4096));
    }

    #[test]
    fn bad_limits_are_errors_naming_the_field() {
        let f = Fixture::new();
        let img = image(|c| c.cmd(strings(&["app"])));
        let cases = [
            Resources {
                memory: Some("64MB".into()),
                ..Default::default()
            },
            Resources {
                cpu: Some("lots".into()),
                ..Default::default()
            },
            Resources {
                pids: Some(0),
                ..Default::default()
            },
        ];
        for (r, field) in cases.into_iter().zip(["memory", "cpu", "pids"]) {
            let mut w = workload();
            w.resources = r;
            let err = f.build(&w, &img).unwrap_err();
            assert!(
                matches!(&err, ContainerError::InvalidResource { field: got, .. } if *got == field),
                "{err}"
            );
            assert!(
                err.to_string().starts_with(&format!("resources.{field}")),
                "{err}"
            );
        }
    }

    #[test]
    fn namespaces_include_network_unless_host_network_and_never_user() {
        let f = Fixture::new();
        let img = image(|c| c.cmd(strings(&["app"])));
        let types = |spec: &Spec| -> Vec<LinuxNamespaceType> {
            linux(spec)
                .namespaces()
                .clone()
                .unwrap()
                .iter()
                .inspect(|n| assert!(n.path().is_none(), "a new namespace, not a joined one"))
                .map(|n| n.typ())
                .collect()
        };
        let spec = f.build(&workload(), &img).unwrap();
        assert_eq!(
            types(&spec),
            [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Cgroup,
                LinuxNamespaceType::Network,
            ]
        );
        let mut host = workload();
        host.host_network = true;
        assert_eq!(
            types(&f.build(&host, &img).unwrap()),
            [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Cgroup,
            ]
        );
        assert!(linux(&spec).seccomp().is_none());
        assert_eq!(spec.hostname().as_deref(), Some("node-1"));
        assert!(
            linux(&spec)
                .masked_paths()
                .clone()
                .unwrap()
                .contains(&"/proc/kcore".to_owned())
        );
        assert!(
            linux(&spec)
                .readonly_paths()
                .clone()
                .unwrap()
                .contains(&"/proc/sys".to_owned())
        );
    }

    fn mount_summary(spec: &Spec) -> Vec<(String, String, String, Vec<String>)> {
        spec.mounts()
            .clone()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap_or_default(),
                    m.source()
                        .as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default(),
                    m.options().clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn mounts_compose_defaults_node_files_and_workload_binds() {
        let f = Fixture::new();
        let data = f.dir.path().join("data");
        fs::create_dir(&data).unwrap();
        let mut w = workload();
        w.mounts = vec![
            WorkloadMount {
                source: data.display().to_string(),
                destination: "/data".into(),
                read_only: false,
            },
            WorkloadMount {
                source: data.display().to_string(),
                destination: "/config".into(),
                read_only: true,
            },
        ];
        let spec = f.build(&w, &image(|c| c.cmd(strings(&["app"])))).unwrap();
        let m = mount_summary(&spec);
        let dests: Vec<&str> = m.iter().map(|(d, ..)| d.as_str()).collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/resolv.conf",
                "/etc/hosts",
                "/data",
                "/config"
            ]
        );
        let sys = &m[5];
        assert_eq!(sys.1, "sysfs");
        assert!(sys.3.contains(&"ro".to_owned()) && sys.3.contains(&"nosuid".to_owned()));
        assert_eq!(m[6].1, "cgroup");
        assert!(m[6].3.contains(&"ro".to_owned()));
        assert_eq!(
            m[7].2,
            f.dir.path().join("resolv.conf").display().to_string()
        );
        assert_eq!(m[7].3, strings(&["rbind", "ro"]));
        assert_eq!(
            m[9],
            (
                "/data".into(),
                "bind".into(),
                data.display().to_string(),
                strings(&["rbind", "rw"])
            )
        );
        assert_eq!(m[10].3, strings(&["rbind", "ro"]));

        let root = spec.root().clone().unwrap();
        assert_eq!(root.path(), Path::new("rootfs"));
        assert_eq!(root.readonly(), Some(false));
        w.read_only_rootfs = true;
        let spec = f.build(&w, &image(|c| c.cmd(strings(&["app"])))).unwrap();
        assert_eq!(spec.root().clone().unwrap().readonly(), Some(true));
    }

    #[test]
    fn node_files_are_skipped_when_missing_or_claimed() {
        let f = Fixture::new();
        fs::remove_file(f.dir.path().join("resolv.conf")).unwrap();
        let mut w = workload();
        w.mounts = vec![WorkloadMount {
            source: f.dir.path().join("hosts").display().to_string(),
            destination: "/etc/hosts".into(),
            read_only: true,
        }];
        let spec = f.build(&w, &image(|c| c.cmd(strings(&["app"])))).unwrap();
        let m = mount_summary(&spec);
        assert!(!m.iter().any(|(d, ..)| d == "/etc/resolv.conf"));
        assert_eq!(m.iter().filter(|(d, ..)| d == "/etc/hosts").count(), 1);
    }

    #[test]
    fn a_missing_mount_source_is_named() {
        let f = Fixture::new();
        let mut w = workload();
        w.mounts = vec![WorkloadMount {
            source: "/nonexistent/bramble".into(),
            destination: "/data".into(),
            read_only: false,
        }];
        let err = f
            .build(&w, &image(|c| c.cmd(strings(&["app"]))))
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/bramble") && err.to_string().contains("/data"),
            "{err}"
        );
    }

    #[test]
    fn stop_signal_and_name_are_annotated() {
        let f = Fixture::new();
        let spec = f
            .build(
                &workload(),
                &image(|c| c.cmd(strings(&["app"])).stop_signal("QUIT")),
            )
            .unwrap();
        let a = spec.annotations().clone().unwrap();
        assert_eq!(
            a.get(STOP_SIGNAL_ANNOTATION).map(String::as_str),
            Some("SIGQUIT")
        );
        assert_eq!(a.get(WORKLOAD_ANNOTATION).map(String::as_str), Some("web"));
        let spec = f
            .build(
                &workload(),
                &image(|c| c.cmd(strings(&["app"])).stop_signal("NOPE")),
            )
            .unwrap();
        assert!(
            !spec
                .annotations()
                .clone()
                .unwrap()
                .contains_key(STOP_SIGNAL_ANNOTATION)
        );
        assert_eq!(parse_signal("15"), Some(nix::sys::signal::Signal::SIGTERM));
        assert_eq!(
            parse_signal("sigint"),
            Some(nix::sys::signal::Signal::SIGINT)
        );
    }

    #[test]
    fn the_spec_round_trips_through_config_json() {
        let f = Fixture::new();
        let spec = f.build(&workload(), &nginx_image()).unwrap();
        let bundle = f.dir.path().join("bundle");
        write_config(&bundle, &spec).unwrap();
        let loaded = Spec::load(bundle.join("config.json")).unwrap();
        assert_eq!(loaded, spec);
        assert!(loaded.version().starts_with("1."));
    }
}

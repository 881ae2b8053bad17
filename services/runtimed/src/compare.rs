//! `runtimed compare`: the time one `true` container takes from start to
//! deletion with this runtime's shim and with another OCI runtime (crun) on
//! the same node, the same bundle and the same cgroup, runs interleaved.
//! `make bench` boots an image that carries crun and runs it once.
//!
//! Both do the same work: the shim installs Bramble's seccomp filter and
//! device policy itself, and crun gets the same policy written the OCI way
//! in its copy of the spec (`linux.seccomp`, which it compiles with
//! libseccomp, and `linux.resources.devices`, which it turns into its own
//! eBPF program).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bramble_config::Workload;

use oci_spec::runtime::{
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall,
    LinuxSyscallBuilder, Spec,
};

use crate::container::devices::{self, Access, Kind};
use crate::container::{self, SpecInput, seccomp};

/// What to compare.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The other runtime (`run --bundle DIR ID` creates, starts, waits for
    /// and deletes a container, as crun and runc do).
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/crun")]
    pub other: PathBuf,
    /// A static busybox, copied into the container's root.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/usr/share/bramble-bench/busybox"
    )]
    pub busybox: PathBuf,
    /// Runs of each runtime (after one warm-up run each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// Scratch directory (on tmpfs).
    #[arg(long, value_name = "DIR", default_value = "/run/bramble/compare")]
    pub work: PathBuf,
}

/// Longest a single run may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(what: &str, cmd: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    loop {
        if let Some(status) = child.try_wait()? {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if !status.success() {
                bail!("{what} failed: {status}");
            }
            return Ok(ms);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} took longer than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// A bundle whose container runs `/bin/true`: busybox in a fresh root on
/// tmpfs, the spec this runtime gives every workload. Returns the shim's
/// bundle and the other runtime's (the same root and spec, with the
/// policy as OCI fields, see [`with_oci_policy`]).
fn bundles(args: &CompareArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    let bundle = args.work.join("bundle");
    let rootfs = bundle.join("rootfs");
    let _ = std::fs::remove_dir_all(&bundle);
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    let busybox = rootfs.join("bin/busybox");
    std::fs::copy(&args.busybox, &busybox)
        .with_context(|| format!("cannot copy {}", args.busybox.display()))?;
    std::fs::set_permissions(
        &busybox,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true"))?;
    let workload = true_workload();
    let image = oci_spec::image::ImageConfiguration::default();
    let spec = container::build_spec(&SpecInput {
        workload: &workload,
        image: &image,
        rootfs: &rootfs,
        cgroup_path: "/bramble/compare".to_owned(),
        hostname: "compare".to_owned(),
        resolv_conf: None,
        hosts: None,
        default_pids: None,
    })?;
    container::write_config(&bundle, &spec)?;
    let other = args.work.join("other-bundle");
    let _ = std::fs::remove_dir_all(&other);
    std::fs::create_dir_all(&other)?;
    container::write_config(&other, &with_oci_policy(spec, &rootfs)?)?;
    Ok((bundle, other))
}

/// `spec` with its root at `rootfs` and with the policy the shim applies on
/// its own (the runtime's default seccomp filter, the device allowlist) as
/// the OCI fields another runtime applies.
fn with_oci_policy(mut spec: Spec, rootfs: &Path) -> anyhow::Result<Spec> {
    if let Some(root) = spec.root_mut() {
        root.set_path(rootfs.to_owned());
    }
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ];
    for rule in devices::ALLOWED {
        let access: String = [
            (Access::READ, 'r'),
            (Access::WRITE, 'w'),
            (Access::MKNOD, 'm'),
        ]
        .into_iter()
        .filter(|(bit, _)| rule.access.contains(*bit))
        .map(|(_, c)| c)
        .collect();
        let mut device = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(match rule.kind {
                Kind::Block => LinuxDeviceType::B,
                Kind::Char => LinuxDeviceType::C,
            })
            .access(access);
        if let Some(major) = rule.major {
            device = device.major(i64::from(major));
        }
        if let Some(minor) = rule.minor {
            device = device.minor(i64::from(minor));
        }
        rules.push(device.build()?);
    }
    let linux = spec
        .linux_mut()
        .as_mut()
        .context("the spec has no linux section")?;
    let mut resources = linux.resources().clone().unwrap_or_default();
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    linux.set_seccomp(Some(oci_seccomp()?));
    Ok(spec)
}

/// The runtime's default seccomp filter for a container without
/// `CAP_SYS_ADMIN` ([`seccomp::filters`]) as an OCI profile.
fn oci_seccomp() -> anyhow::Result<LinuxSeccomp> {
    let errno = |names: Vec<String>, errno: i32| -> anyhow::Result<LinuxSyscall> {
        Ok(LinuxSyscallBuilder::default()
            .names(names)
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno.unsigned_abs())
            .build()?)
    };
    let refused = seccomp::ALWAYS_REFUSED
        .iter()
        .chain(seccomp::NEEDS_SYS_ADMIN)
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let mut syscalls = vec![errno(refused, libc::EPERM)?];
    for flag in seccomp::CLONE_NEW_FLAGS {
        let flag = u64::from(flag.unsigned_abs());
        let mut rule = errno(vec!["clone".to_owned()], libc::EPERM)?;
        rule.set_args(Some(vec![
            LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(flag)
                .value_two(flag)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?,
        ]));
        syscalls.push(rule);
    }
    syscalls.push(errno(vec!["clone3".to_owned()], libc::ENOSYS)?);
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(syscalls)
        .build()?)
}

fn true_workload() -> Workload {
    Workload {
        name: "compare".to_owned(),
        image: "bench/true".to_owned(),
        command: vec!["/bin/true".to_owned()],
        args: Vec::new(),
        env: std::collections::BTreeMap::new(),
        working_dir: None,
        user: None,
        mounts: Vec::new(),
        resources: bramble_config::Resources::default(),
        restart: bramble_config::RestartPolicy::Never,
        read_only_rootfs: false,
        capabilities: Vec::new(),
        stop_grace_period_seconds: Some(1),
        seccomp: bramble_config::SeccompProfile::default(),
        host_network: false,
        ports: Vec::new(),
    }
}

/// Runs the comparison and prints one line with both medians and their
/// ratio.
pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("cannot find this binary")?;
    let (bundle, other_bundle) = bundles(args)?;
    let state = args.work.join("state");
    let other_state = args.work.join("other-state");
    std::fs::create_dir_all(&state)?;
    std::fs::create_dir_all(&other_state)?;
    let ours = |i: u32| -> anyhow::Result<f64> {
        let id = format!("compare-ours-{i}");
        let exit = args.work.join(format!("{id}.exit.json"));
        let ms = timed(
            "runtimed shim",
            Command::new(&me)
                .arg("shim")
                .arg("--id")
                .arg(&id)
                .arg("--bundle")
                .arg(&bundle)
                .arg("--state-root")
                .arg(&state)
                .arg("--exit-file")
                .arg(&exit)
                .arg("--started-file")
                .arg(args.work.join(format!("{id}.started.json")))
                .args(["--grace-secs", "1"]),
        )?;
        let report = container::read_exit(&exit)?;
        if report.error.is_some() || report.exit_code != Some(0) {
            bail!("the shim's `true` did not succeed: {report:?}");
        }
        Ok(ms)
    };
    let other = |i: u32| -> anyhow::Result<f64> {
        timed(
            &args.other.display().to_string(),
            Command::new(&args.other)
                .arg("--root")
                .arg(&other_state)
                .arg("run")
                .arg("--bundle")
                .arg(&other_bundle)
                .arg(format!("compare-other-{i}")),
        )
    };
    // Warm-up: page cache, first cgroup creation.
    ours(0)?;
    other(0)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 1..=args.runs {
        a.push(ours(i)?);
        b.push(other(i)?);
    }
    let (a, b) = (median(&mut a), median(&mut b));
    let name = args
        .other
        .file_name()
        .map_or_else(|| "other".into(), |n| n.to_string_lossy().into_owned());
    println!(
        "compare: true container create+start+wait+delete, median of {}: runtimed {a:.1} ms, {name} {b:.1} ms, ratio {:.2}",
        args.runs,
        a / b
    );
    let _ = std::fs::remove_dir_all(&args.work);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_runtime_gets_the_same_policy_as_oci_fields() {
        let dir = tempfile::tempdir().unwrap();
        let busybox = dir.path().join("busybox");
        std::fs::write(&busybox, b"").unwrap();
        let args = CompareArgs {
            other: PathBuf::from("/bin/false"),
            busybox,
            runs: 1,
            work: dir.path().join("work"),
        };
        let (_, other) = bundles(&args).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(other.join("config.json")).unwrap()).unwrap();
        let root = json["root"]["path"].as_str().unwrap();
        assert_eq!(root, args.work.join("bundle/rootfs").to_str().unwrap());
        let devices = json["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1 + devices::ALLOWED.len());
        assert_eq!(devices[0]["allow"], false);
        assert_eq!(devices[1]["access"], "rwm");
        assert_eq!(
            devices[8],
            serde_json::json!({"allow": true, "type": "c", "major": 136, "access": "rwm"})
        );
        let seccomp = &json["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
        let calls = seccomp["syscalls"].as_array().unwrap();
        let names = calls[0]["names"].as_array().unwrap();
        assert!(names.contains(&serde_json::json!("bpf")));
        assert!(names.contains(&serde_json::json!("mount")));
        assert_eq!(calls[0]["errnoRet"], libc::EPERM);
        assert_eq!(calls.len(), 1 + seccomp::CLONE_NEW_FLAGS.len() + 1);
        assert_eq!(calls[1]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(calls.last().unwrap()["names"][0], "clone3");
        assert_eq!(calls.last().unwrap()["errnoRet"], libc::ENOSYS);
    }
}

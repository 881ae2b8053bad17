//! `runtimed compare`: the time one `true` container takes from start to
//! deletion with this runtime's shim and with another OCI runtime (crun) on
//! the same node, the same bundle and the same cgroup, runs interleaved.
//! `make bench` boots an image that carries crun and runs it once.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bramble_config::Workload;

use crate::container::{self, SpecInput};

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
/// tmpfs, the spec this runtime gives every workload.
fn bundle(args: &CompareArgs) -> anyhow::Result<PathBuf> {
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
    Ok(bundle)
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
    let bundle = bundle(args)?;
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
                .arg(&bundle)
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

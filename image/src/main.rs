//! `bramble-image`: builds Bramble's SD-card image. See the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bramble_image::builder::{self, BuildConfig};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bramble-image",
    version,
    about = "Build Bramble's SD-card image (no root needed)"
)]
struct Cli {
    /// Log more (debug level).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build dist/bramble-arm64.img, .img.xz, .img.bmap, SHA256SUMS and parts/.
    Build(BuildArgs),
    /// Check every cached .deb against the lock file's sha256.
    VerifyLock {
        /// The package lock (boot/packages.lock).
        #[arg(long)]
        lock: PathBuf,
        /// Directory of cached .debs (.cache/debs).
        #[arg(long)]
        cache: PathBuf,
    },
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// The package lock (boot/packages.lock).
    #[arg(long)]
    lock: PathBuf,
    /// Directory of cached .debs (.cache/debs).
    #[arg(long)]
    cache: PathBuf,
    /// Boot assets: boot.cmd, config.txt, cmdline.txt, modules.txt, modules-rootfs.txt,
    /// rootfs-packages.txt.
    #[arg(long)]
    boot_dir: PathBuf,
    /// Cross-built bramble-init, bramble-apid, bramble-networkd, bramble-timed.
    #[arg(long)]
    bin_dir: PathBuf,
    /// Tree copied into the root file system.
    #[arg(long)]
    rootfs_overlay: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Image version (os-release VERSION_ID).
    #[arg(long)]
    version: String,
    /// Source revision (os-release BUILD_ID).
    #[arg(long)]
    git_revision: String,
    /// Every timestamp in the image [default: $SOURCE_DATE_EPOCH].
    #[arg(long)]
    source_date_epoch: Option<u64>,
    /// Base URL the release's files are downloaded from, for the Raspberry Pi
    /// Imager entry's `url` (empty: the bare file name).
    #[arg(long, default_value = "")]
    release_base_url: String,
}

fn source_date_epoch(arg: Option<u64>) -> Result<u64> {
    if let Some(v) = arg {
        return Ok(v);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds since 1970")
        }),
        Err(_) => bail!(
            "no build time: pass --source-date-epoch N or set SOURCE_DATE_EPOCH \
             (for example to `git log -1 --format=%ct`); every timestamp in the image is set to it"
        ),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(a) => {
            let cfg = BuildConfig {
                source_date_epoch: source_date_epoch(a.source_date_epoch)?,
                lock: a.lock,
                cache: a.cache,
                boot_dir: a.boot_dir,
                bin_dir: a.bin_dir,
                rootfs_overlay: a.rootfs_overlay,
                out: a.out,
                version: a.version,
                git_revision: a.git_revision,
                release_base_url: a.release_base_url,
            };
            let report = builder::build(&cfg).context("image build failed")?;
            print!("{}", report.summary());
        }
        Command::VerifyLock { lock, cache } => {
            let ok = builder::verify_lock(&lock, &cache).context("lock verification failed")?;
            for (name, file) in ok {
                println!("ok  {name}  {file}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_max_level(if cli.verbose {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

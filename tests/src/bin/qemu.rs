//! `make qemu`: boot one Bramble node with its serial console on this
//! terminal and its machine API forwarded to a loopback port.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bramble_tests::{paths, qemu};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    about = "Boot a Bramble image in QEMU (virt, through U-Boot) with the console on this terminal"
)]
struct Args {
    /// The raw image to boot (copied; the copy is the node's disk).
    #[arg(long, default_value = "dist/bramble-arm64.img")]
    image: PathBuf,
    /// The node's disk; created from the image when missing or older.
    #[arg(long, default_value = "build/qemu/node.img")]
    disk: PathBuf,
    /// Start from a fresh copy of the image even if the disk exists.
    #[arg(long)]
    fresh: bool,
    /// Loopback port for the API (default: the first free one from 50000).
    #[arg(long)]
    port: Option<u16>,
    /// Guest memory in MiB (a Pi 3 has 1024).
    #[arg(long, default_value_t = 1024)]
    memory: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stale = match (
        std::fs::metadata(&args.disk),
        std::fs::metadata(&args.image),
    ) {
        (Ok(disk), Ok(image)) => disk.modified()? < image.modified()?,
        (Err(_), _) => true,
        (Ok(_), Err(e)) => {
            return Err(e).with_context(|| format!("{} (run `make image`)", args.image.display()));
        }
    };
    if args.fresh || stale {
        if let Some(dir) = args.disk.parent() {
            std::fs::create_dir_all(dir)?;
        }
        qemu::prepare_disk(&args.image, &args.disk, 0)?;
    }
    let port = match args.port {
        Some(port) => port,
        None => (50000..50100)
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .context("no free loopback port in 50000-50099")?,
    };
    let mut opts = qemu::Options::new(args.disk.clone(), port);
    opts.memory_mib = args.memory;
    let uboot = paths::uboot_qemu()?;
    eprintln!("Bramble node: disk {}", args.disk.display());
    eprintln!(
        "Machine API:  127.0.0.1:{port}  (try: target/debug/nodectl version --insecure -n 127.0.0.1:{port})"
    );
    eprintln!("Console:      below; Ctrl-A X quits QEMU, Ctrl-A C toggles the QEMU monitor");
    let err = opts.command(&uboot).arg("-nographic").exec();
    Err(err).context("running qemu-system-aarch64 (run `make deps`)")
}

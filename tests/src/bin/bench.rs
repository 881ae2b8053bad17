//! `make bench`: boots the image in QEMU and prints Bramble's figures:
//! guest time from kernel start to "API ready", sizes, idle memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bramble_tests::{paths, qemu};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "dist/bramble-arm64.img")]
    image: PathBuf,
    #[arg(long, default_value = "target/aarch64-unknown-linux-musl/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value = "dist")]
    dist: PathBuf,
    /// How many boots to measure (the median is reported).
    #[arg(long, default_value_t = 3)]
    boots: usize,
}

/// The number just before `unit` after `marker` on the first line holding
/// `marker`.
fn figure(console: &str, marker: &str, key: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(marker))?;
    let rest = &line[line.find(key)? + key.len()..];
    let number: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok()
}

fn size(path: &Path) -> String {
    std::fs::metadata(path).map_or_else(
        |_| "missing".to_owned(),
        |m| {
            format!(
                "{:>10.2} MiB  ({} bytes)",
                m.len() as f64 / 1048576.0,
                m.len()
            )
        },
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.boots == 0 {
        bail!("--boots must be at least 1");
    }
    let dir = paths::test_dir("bench")?;
    let mut ready = Vec::new();
    let mut wall = Vec::new();
    let mut memory = String::new();
    for boot in 0..args.boots {
        let disk = dir.path().join("disk.img");
        qemu::prepare_disk(&args.image, &disk, 0)?;
        let mut node = qemu::Node::start(&qemu::Options::new(disk, qemu::free_port()?))?;
        node.wait_ready(Duration::from_secs(180))?;
        wall.push(node.elapsed().as_secs_f64());
        let console = node.console();
        let secs = figure(&console, qemu::READY_MARKER, "API ready")
            .with_context(|| format!("no timing on the ready line:\n{}", node.console_tail(20)))?;
        eprintln!(
            "boot {}: API ready {secs:.3} s after kernel start",
            boot + 1
        );
        ready.push(secs);
        if boot == 0 {
            node.wait_for("idle memory:", Duration::from_secs(60))?;
            memory = node
                .console()
                .lines()
                .find(|l| l.contains("idle memory:"))
                .unwrap_or_default()
                .to_owned();
        }
    }
    let rss = |name: &str| {
        figure(&memory, "idle memory:", &format!("{name} rss"))
            .map_or("n/a".to_owned(), |kib| format!("{:.2} MiB", kib / 1024.0))
    };

    println!(
        "Bramble figures (QEMU virt, cortex-a72, 2 vCPUs under TCG on this host; {} boots, median)",
        args.boots
    );
    println!(
        "  kernel start -> API ready (guest)  {:>8.3} s   goal <= 2.0 s",
        median(&mut ready)
    );
    println!(
        "  QEMU start -> API ready (wall)     {:>8.3} s   includes U-Boot's 2 s autoboot delay",
        median(&mut wall)
    );
    println!(
        "  PID 1 idle RSS                     {:>12}   goal <= 4 MiB",
        rss("init")
    );
    println!(
        "  apid idle RSS                      {:>12}   goal <= 12 MiB",
        rss("apid")
    );
    println!(
        "  networkd idle RSS                  {:>12}   goal <= 6 MiB",
        rss("networkd")
    );
    println!("Sizes");
    println!(
        "  raw image          {}",
        size(&args.dist.join("bramble-arm64.img"))
    );
    println!(
        "  compressed image   {}",
        size(&args.dist.join("bramble-arm64.img.xz"))
    );
    println!(
        "  rootfs squashfs    {}",
        size(&args.dist.join("parts/rootfs.squashfs"))
    );
    println!(
        "  initramfs          {}",
        size(&args.dist.join("parts/initrd.img"))
    );
    for bin in ["bramble-init", "bramble-apid", "bramble-networkd"] {
        println!("  {bin:<18} {}", size(&args.bin_dir.join(bin)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_figures_from_console_lines() {
        let console = "[    2.500] bramble: INFO node ready: API ready 1.234 s after kernel start\n\
                       [    7.600] bramble: INFO idle memory: init rss 1800 KiB, apid rss 7000 KiB\n";
        assert_eq!(figure(console, "node ready:", "API ready"), Some(1.234));
        assert_eq!(figure(console, "idle memory:", "apid rss"), Some(7000.0));
        assert_eq!(figure(console, "idle memory:", "etcd rss"), None);
    }
}

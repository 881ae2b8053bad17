//! Faults injected into a node in QEMU, each followed by the node serving
//! its authenticated API: `/var` filled by a pull (refused with the
//! reason, the space given back, the next pull stored), and the power cut
//! (QEMU killed) while a layer streams in, found by counting the bytes that
//! pass through a relay of the test's between the guest and the registry.
//! After the cut the node boots, answers over mutual TLS, holds no partial
//! image, and the same pull completes.
//!
//! And the power cut while PID 1 grows `DATA` on a bigger card: with the
//! test-only switch `bramble.test_fault=cut-mid-grow` PID 1 holds after the
//! first write of the partition table reached the disk, and QEMU is killed
//! there. The next boot (without the switch) finishes the growth and the
//! node serves.
//!
//! `STATE` unmountable is `recovery.rs`'s test.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bramble_oci_store::build::{Entry, ImageBuilder};
use bramble_testkit::registry::Registry;
use bramble_tests::nodectl::Client;
use bramble_tests::{busybox, fault, paths, qemu, wait};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the guest finds the registry (through the relay below).
const REGISTRY: &str = "10.0.2.100:5000";

/// busybox with one more layer holding `mib` MiB of noise.
fn noisy_image(busybox: &[u8], mib: usize, seed: u64) -> ImageBuilder {
    busybox::image(busybox).layer(vec![Entry::file(
        "noise.bin",
        0o644,
        &busybox::noise(mib << 20, seed),
    )])
}

/// A TCP relay on loopback to `target`, counting the bytes it carries from
/// `target` to its clients.
fn counting_relay(target: u16) -> Result<(u16, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (Ok(mut c_in), Ok(mut u_out)) = (client.try_clone(), upstream.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut u_out);
                let _ = u_out.shutdown(Shutdown::Write);
            });
            let counter = Arc::clone(&counter);
            let (mut u_in, mut c_out) = (upstream, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = u_in.read(&mut buf) {
                    if n == 0 || c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = c_out.shutdown(Shutdown::Write);
            });
        }
    });
    Ok((port, served))
}

/// The switch that stops PID 1 between the writes that grow `DATA`.
const CUT_MID_GROW: &str = "bramble.test_fault=cut-mid-grow";

fn start(dir: &Path, disk: &Path, api: u16, relay: u16, n: u32) -> Result<qemu::Node> {
    let mut opts = qemu::Options::logged(disk, api, dir, n);
    opts.guest_forwards = vec![qemu::GuestForward {
        guest_ip: "10.0.2.100".to_owned(),
        guest_port: 5000,
        host_port: relay,
    }];
    qemu::Node::boot(&opts, BOOT_TIMEOUT)
}

fn images(c: &Client, addr: &str) -> Result<Vec<String>> {
    let rows: serde_json::Value =
        serde_json::from_str(&c.ok(addr, &["images", "-o", "json"])?).context("images json")?;
    Ok(rows
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|r| r["reference"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn a_full_var_and_a_power_cut_mid_pull_leave_a_node_that_serves_and_pulls_again() -> Result<()> {
    let dir = paths::test_dir("faults")?;
    let bb = busybox::arm64()?;
    let registry = Registry::start();
    busybox::push(
        &registry,
        "bramble/busybox:1",
        &busybox::image(&bb).parts()?,
    )?;
    // 40 MiB of noise: its blob and its unpacked copy do not fit in the
    // 64 MiB DATA partition of an image that was not grown.
    busybox::push(
        &registry,
        "bramble/big:1",
        &noisy_image(&bb, 40, 1).parts()?,
    )?;
    busybox::push(
        &registry,
        "bramble/medium:1",
        &noisy_image(&bb, 12, 2).parts()?,
    )?;
    let (relay, served) = counting_relay(registry.port())?;

    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, 0)?;
    let api = qemu::free_port()?;
    let mut node = start(dir.path(), &disk, api, relay, 1)?;
    let addr = node.api_addr();
    let config = format!("machine:\n  registries:\n    insecure: [\"{REGISTRY}\"]\n");
    let c = Client::generate(&dir.path().join("cluster"), &[&config])?;
    c.apply_first(&addr, CALL_TIMEOUT)?;
    wait::eventually(
        "the runtime answering",
        CALL_TIMEOUT,
        Duration::from_millis(500),
        || Ok(c.run(&addr, &["images"]).is_ok_and(|o| o.success)),
    )?;

    // /var full: the pull is refused with the reason, nothing of it stays,
    // and the space it took is free again for the next pull.
    let big = format!("{REGISTRY}/bramble/big:1");
    fault::injected("/var full during a pull");
    let out = c.run(&addr, &["image", "pull", &big])?;
    ensure!(
        !out.success,
        "a 40 MiB layer fitted in /var: {}",
        out.stdout
    );
    ensure!(
        out.stderr.contains("No space left on device"),
        "the reason names the lack of space: {}",
        out.stderr
    );
    ensure!(images(&c, &addr)?.is_empty(), "{:?}", images(&c, &addr)?);
    let medium = format!("{REGISTRY}/bramble/medium:1");
    c.ok(&addr, &["image", "pull", &medium])
        .context("a pull after /var was full")?;
    ensure!(images(&c, &addr)? == std::slice::from_ref(&medium));
    fault::survived("/var full during a pull");
    c.ok(&addr, &["image", "rm", &medium])?;

    // Power cut while the medium image's layer streams in: QEMU is killed
    // once 4 MiB of it have passed the relay.
    let before = served.load(Ordering::Relaxed);
    let pull = {
        let c = Client {
            nodeconfig: c.nodeconfig.clone(),
            controlplane: c.controlplane.clone(),
        };
        let (addr, medium) = (addr.clone(), medium.clone());
        std::thread::spawn(move || c.run(&addr, &["image", "pull", &medium]))
    };
    wait::eventually(
        "4 MiB of the layer on its way",
        PULL_TIMEOUT,
        Duration::from_millis(20),
        || Ok(served.load(Ordering::Relaxed) >= before + (4 << 20)),
    )?;
    fault::injected("power cut while a layer streams in");
    node.kill();
    let cut = pull
        .join()
        .map_err(|_| anyhow::anyhow!("the pull thread panicked"))??;
    ensure!(
        !cut.success,
        "the pull finished before the cut: {}",
        cut.stdout
    );

    let mut node = start(dir.path(), &disk, api, relay, 2)?;
    c.wait_answer(&addr, CALL_TIMEOUT)
        .with_context(|| node.console_tail(40))?;
    wait::eventually(
        "the runtime answering after the cut",
        CALL_TIMEOUT,
        Duration::from_millis(500),
        || Ok(c.run(&addr, &["images"]).is_ok_and(|o| o.success)),
    )?;
    ensure!(
        images(&c, &addr)?.is_empty(),
        "a half-pulled image is listed: {:?}",
        images(&c, &addr)?
    );
    c.ok(&addr, &["image", "pull", &medium])
        .context("the same pull after the power cut")?;
    ensure!(images(&c, &addr)? == [medium]);
    fault::survived("power cut while a layer streams in");
    node.kill();
    Ok(())
}

#[test]
fn a_power_cut_while_data_grows_is_finished_by_the_next_boot() -> Result<()> {
    let dir = paths::test_dir("cut-mid-grow")?;
    let disk = dir.path().join("disk.img");
    let grow_by: u64 = 256 << 20;
    qemu::prepare_disk(&paths::image()?, &disk, grow_by)?;
    let before = bramble_tests::disk::data_partition(&disk)?;
    bramble_tests::disk::add_kernel_arg(&disk, CUT_MID_GROW)?;

    let api = qemu::free_port()?;
    let mut node = qemu::Node::start(&qemu::Options::logged(&disk, api, dir.path(), 1))?;
    node.wait_for("cut the power now", BOOT_TIMEOUT)?;
    fault::injected("power cut while DATA grows");
    node.kill();
    // The cut came between two writes of the table: the extended partition
    // reaches the disk's end, DATA is still the image's.
    let mut file = std::fs::File::open(&disk)?;
    let parts = bramble_disk::mbr::read_partitions(&mut file)?;
    let extended = parts
        .iter()
        .find(|p| p.is_extended())
        .context("no extended partition")?;
    let disk_len = file.metadata()?.len();
    ensure!(
        disk_len - extended.end_lba() * 512 < 1 << 20,
        "the first write (the MBR's extended partition) is not on the disk: {parts:?}"
    );
    let cut = bramble_tests::disk::data_partition(&disk)?;
    ensure!(
        cut.sectors == before.sectors,
        "DATA grew before the cut: {cut:?}"
    );

    bramble_tests::disk::remove_kernel_arg(&disk, CUT_MID_GROW)?;
    let mut node = qemu::Node::boot(
        &qemu::Options::logged(&disk, api, dir.path(), 2),
        BOOT_TIMEOUT,
    )?;
    ensure!(
        node.console().contains("data partition 6 grown"),
        "the next boot did not finish the growth:\n{}",
        node.console_tail(40)
    );
    let c = Client::generate(&dir.path().join("cluster"), &[])?;
    c.apply_first(&node.api_addr(), CALL_TIMEOUT)?;
    wait::eventually(
        "the runtime answering over mutual TLS",
        CALL_TIMEOUT,
        Duration::from_millis(500),
        || {
            Ok(c.run(&node.api_addr(), &["images"])
                .is_ok_and(|o| o.success))
        },
    )?;
    fault::survived("power cut while DATA grows");
    // An orderly power-off, so the resized filesystem is cleanly on disk.
    c.ok(&node.api_addr(), &["shutdown"])?;
    node.wait_exit(BOOT_TIMEOUT)
        .with_context(|| format!("the node did not power off:\n{}", node.console_tail(30)))?;
    bramble_tests::disk::data_fills_disk(&disk)
}

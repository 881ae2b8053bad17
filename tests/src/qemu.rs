//! One Bramble node in `qemu-system-aarch64`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// The line PID 1 prints once the machine API answers.
pub const READY_MARKER: &str = "node ready:";
/// The console is kept up to this size (older text is dropped).
const CONSOLE_CAP: usize = 8 << 20;
/// The QEMU network backend a `raspi3b` node's USB adapter attaches to.
const USB_NETDEV: &str = "net0";

/// Copies `image` to `dest` without writing its holes, then extends the copy
/// by `grow_by` bytes (a bigger "SD card").
pub fn prepare_disk(image: &Path, dest: &Path, grow_by: u64) -> Result<()> {
    let status = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(image)
        .arg(dest)
        .status()
        .context("running cp")?;
    ensure!(
        status.success(),
        "copying {} to {} failed",
        image.display(),
        dest.display()
    );
    if grow_by > 0 {
        let file = fs::OpenOptions::new().write(true).open(dest)?;
        let len = file.metadata()?.len();
        file.set_len(len + grow_by)?;
    }
    Ok(())
}

/// Copies `image` to `dest` like [`prepare_disk`] and pads the copy to the
/// next power of two, the only sizes QEMU's emulated SD card accepts.
/// Returns the card's size.
pub fn prepare_sd_card(image: &Path, dest: &Path) -> Result<u64> {
    let len = fs::metadata(image)
        .with_context(|| format!("reading {}", image.display()))?
        .len();
    let card = len.max(1).next_power_of_two();
    prepare_disk(image, dest, card - len)?;
    Ok(card)
}

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What a `virt` node's first network card is attached to.
#[derive(Debug, Clone, Default)]
pub enum Network {
    /// QEMU's restricted user network (10.0.2.0/24, DHCP from QEMU), with the
    /// API port forwarded to [`Options::api_port`] on loopback.
    #[default]
    User,
    /// A tap device on a bridge in a network namespace
    /// ([`crate::cluster::Lan`]): QEMU runs inside `netns` (`ip netns exec`)
    /// so it finds `tap` there; the card has the hardware address `mac`. No
    /// port is forwarded: the API is reached at the node's own address on the
    /// bridge, from inside the namespace. Guest and host forwards do not
    /// apply.
    Lan {
        netns: String,
        tap: String,
        mac: String,
    },
}

/// The emulated board.
#[derive(Debug, Clone, Default)]
pub enum Machine {
    /// QEMU `virt` (cortex-a72, virtio disk and network) with U-Boot
    /// `qemu_arm64` as its firmware.
    #[default]
    Virt,
    /// QEMU `raspi3b`: the Pi 3's SoC, the image on its SD card, the Pi's
    /// U-Boot loaded where the Pi firmware would load it (`-kernel`) with the
    /// Pi 3 device tree the firmware would hand over (`-dtb`). Networking is
    /// QEMU's `usb-net` on the emulated DWC2 USB host, plugged in with
    /// [`Node::plug_usb_net`].
    Raspi3b(RaspiFirmware),
}

/// What the Pi's own firmware would load from the boot partition before
/// U-Boot runs: `u-boot.bin` (`rpi_arm64`) and the board's device tree.
#[derive(Debug, Clone)]
pub struct RaspiFirmware {
    pub uboot: PathBuf,
    pub dtb: PathBuf,
}

/// The Pi 3B's device tree, as Debian's kernel package ships it.
pub const RASPI3B_DTB: &str = "bcm2837-rpi-3-b.dtb";
const RPI_UBOOT_PACKAGE: &str = "u-boot-rpi";
const RPI_UBOOT_PATH: &str = "usr/lib/u-boot/rpi_arm64/u-boot.bin";

impl RaspiFirmware {
    /// Writes `u-boot.bin` and the Pi 3B device tree into `dir`, taken from
    /// the pinned packages (`boot/packages.lock`, checked by sha256) in the
    /// `.deb` cache: the same bytes the image builder copies onto the boot
    /// partition.
    pub fn extract(lock: &Path, cache: &Path, dir: &Path) -> Result<Self> {
        use bramble_image::{deb, lock as pins};
        let lock = pins::Lock::load(lock)?;
        let uboot = dir.join("u-boot.bin");
        let dtb = dir.join(RASPI3B_DTB);

        let entry = lock.get(RPI_UBOOT_PACKAGE)?;
        let deb_path = cache.join(&entry.file);
        let data = pins::read_verified(cache, entry)?;
        let mut found = None;
        deb::for_each_file(&deb_path, &data, |path, kind, r| {
            if kind == deb::Kind::File && path == RPI_UBOOT_PATH {
                found = Some(deb::read_all(path, r)?);
            }
            Ok(())
        })?;
        let bytes =
            found.with_context(|| format!("no {RPI_UBOOT_PATH} in {}", deb_path.display()))?;
        fs::write(&uboot, bytes)?;

        let entry = lock.get_prefixed("linux-image-")?;
        let deb_path = cache.join(&entry.file);
        let data = pins::read_verified(cache, entry)?;
        let suffix = format!("/broadcom/{RASPI3B_DTB}");
        let mut found = None;
        deb::for_each_file(&deb_path, &data, |path, kind, r| {
            if kind == deb::Kind::File
                && path.starts_with("usr/lib/linux-image-")
                && path.ends_with(&suffix)
            {
                found = Some(deb::read_all(path, r)?);
            }
            Ok(())
        })?;
        let bytes = found.with_context(|| format!("no {RASPI3B_DTB} in {}", deb_path.display()))?;
        fs::write(&dtb, bytes)?;
        Ok(Self { uboot, dtb })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub disk: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Loopback port forwarded to the node's API port 50000.
    pub api_port: u16,
    /// Where the console is copied as it arrives.
    pub console_log: Option<PathBuf>,
    /// A QEMU monitor socket, for power-button presses.
    pub monitor_socket: Option<PathBuf>,
    /// The emulated board.
    pub machine: Machine,
    /// Start the board's real-time clock at this date (`-rtc base=`, e.g.
    /// `2001-01-01T00:00:00`) instead of the host's time.
    pub rtc_base: Option<String>,
    /// Network cards beside the first (virt only): each on its own
    /// restricted user network (10.0.3.0/24, 10.0.4.0/24...), seen by the
    /// guest as eth1, eth2...
    pub extra_nics: u32,
    /// Guest TCP addresses forwarded to host loopback ports (virt only):
    /// the guest connects to `10.0.2.100:5000`, QEMU runs `bramble-relay`
    /// for each connection, which connects to `127.0.0.1:PORT`. The
    /// network stays restricted: nothing else leaves the guest.
    pub guest_forwards: Vec<GuestForward>,
    /// More host loopback ports forwarded to guest TCP ports (virt only),
    /// as `(host port, guest port)`, beside the API's.
    pub host_forwards: Vec<(u16, u16)>,
    /// What the first network card is attached to (virt only).
    pub network: Network,
}

/// One guest address forwarded to a loopback port; see
/// [`Options::guest_forwards`].
#[derive(Debug, Clone)]
pub struct GuestForward {
    /// Address in QEMU's user network (10.0.2.0/24), e.g. `10.0.2.100`.
    pub guest_ip: String,
    pub guest_port: u16,
    /// The port on the host's 127.0.0.1.
    pub host_port: u16,
}

impl Options {
    pub fn new(disk: PathBuf, api_port: u16) -> Self {
        Self {
            disk,
            memory_mib: 1024,
            cpus: 2,
            api_port,
            console_log: None,
            monitor_socket: None,
            machine: Machine::Virt,
            rtc_base: None,
            extra_nics: 0,
            guest_forwards: Vec::new(),
            host_forwards: Vec::new(),
            network: Network::User,
        }
    }

    /// A `virt` node whose console is kept in `dir/console-{boot}.log`
    /// (`boot`: which boot of the test this is).
    pub fn logged(disk: &Path, api_port: u16, dir: &Path, boot: u32) -> Self {
        let mut opts = Self::new(disk.to_path_buf(), api_port);
        opts.console_log = Some(dir.join(format!("console-{boot}.log")));
        opts
    }

    /// A `raspi3b` node booting `sd_card` (a power-of-two sized copy of the
    /// image, see [`prepare_sd_card`]).
    pub fn raspi3b(sd_card: PathBuf, api_port: u16, firmware: RaspiFirmware) -> Self {
        Self {
            memory_mib: 1024,
            cpus: 4,
            machine: Machine::Raspi3b(firmware),
            ..Self::new(sd_card, api_port)
        }
    }

    /// The QEMU command line for `raspi3b`. The board is fixed: 4 cores and
    /// 1 GiB. The SD card is the Pi's; the machine API port is forwarded
    /// through user-mode networking, which the guest reaches once a
    /// `usb-net` device is plugged into the DWC2 USB host
    /// ([`Node::plug_usb_net`]).
    pub fn raspi3b_command(&self, fw: &RaspiFirmware) -> Command {
        let mut cmd = Command::new("qemu-system-aarch64");
        cmd.args(["-M", "raspi3b", "-m", "1G"])
            .arg("-kernel")
            .arg(&fw.uboot)
            .arg("-dtb")
            .arg(&fw.dtb)
            .arg("-drive")
            .arg(format!("if=sd,format=raw,file={}", self.disk.display()))
            .arg("-netdev")
            .arg(format!(
                "user,id={USB_NETDEV},restrict=on,hostfwd=tcp:127.0.0.1:{}-:50000",
                self.api_port
            ));
        if let Some(base) = &self.rtc_base {
            cmd.arg("-rtc").arg(format!("base={base}"));
        }
        cmd
    }

    /// `,guestfwd=...` for each [`GuestForward`] (a chardev forward serves
    /// only one connection, so each connection runs the relay instead), then
    /// `,hostfwd=...` for each of [`Options::host_forwards`].
    fn guest_forward_options(&self) -> String {
        let relay = crate::paths::relay();
        let guest = self.guest_forwards.iter().map(|f| {
            format!(
                ",guestfwd=tcp:{}:{}-cmd:{} 127.0.0.1:{}",
                f.guest_ip,
                f.guest_port,
                relay.display(),
                f.host_port
            )
        });
        let host = self
            .host_forwards
            .iter()
            .map(|(host, guest)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        guest.chain(host).collect()
    }

    /// The QEMU command line: the `virt` machine with U-Boot as its firmware,
    /// so the image boots through the same boot script as on a Pi.
    pub fn command(&self, uboot: &Path) -> Command {
        let mut cmd = match &self.network {
            Network::User => Command::new("qemu-system-aarch64"),
            Network::Lan { netns, .. } => {
                crate::cluster::netns_command(netns, "qemu-system-aarch64")
            }
        };
        // acpi=off: U-Boot hands Linux a device tree, and only without ACPI
        // does QEMU put its power button (gpio-keys) in it.
        cmd.args(["-M", "virt,acpi=off", "-cpu", "cortex-a72"])
            .args([
                "-m",
                &self.memory_mib.to_string(),
                "-smp",
                &self.cpus.to_string(),
            ])
            .arg("-bios")
            .arg(uboot)
            .arg("-drive")
            .arg(format!(
                "if=none,file={},format=raw,id=disk0",
                self.disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=disk0"])
            .arg("-netdev");
        match &self.network {
            // restrict=on: the guest reaches nothing beyond QEMU's own DHCP
            // and the forwarded port (tests stay on loopback).
            Network::User => cmd
                .arg(format!(
                    "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{}-:50000{}",
                    self.api_port,
                    self.guest_forward_options()
                ))
                .args(["-device", "virtio-net-pci,netdev=net0,romfile="]),
            Network::Lan { tap, mac, .. } => cmd
                .arg(format!("tap,id=net0,ifname={tap},script=no,downscript=no"))
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=net0,mac={mac},romfile=")),
        };
        cmd.args(["-device", "virtio-rng-pci"]).arg("-no-reboot");
        for n in 1..=self.extra_nics {
            cmd.arg("-netdev")
                // Its own subnet, so the guest never has two routes to 10.0.2.0/24.
                .arg(format!(
                    "user,id=net{n},restrict=on,net=10.0.{}.0/24",
                    2 + n
                ))
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=net{n},romfile="));
        }
        if let Some(base) = &self.rtc_base {
            cmd.arg("-rtc").arg(format!("base={base}"));
        }
        cmd
    }
}

/// A running node. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Node {
    child: Child,
    console: Arc<Mutex<String>>,
    pub api_port: u16,
    monitor: Option<PathBuf>,
    started: Instant,
}

impl Node {
    pub fn start(opts: &Options) -> Result<Self> {
        let mut cmd = match &opts.machine {
            Machine::Virt => {
                let uboot = crate::paths::uboot_qemu()?;
                let mut cmd = opts.command(&uboot);
                cmd.args(["-serial", "stdio"]);
                cmd
            }
            Machine::Raspi3b(fw) => {
                ensure!(
                    matches!(opts.network, Network::User),
                    "a raspi3b node has only the user network"
                );
                let mut cmd = opts.raspi3b_command(fw);
                // The console a Pi user sees is the UART on the GPIO header,
                // the mini UART: QEMU's second serial port (the first is the
                // PL011, which a Pi wires to Bluetooth).
                cmd.args(["-serial", "null", "-serial", "stdio"]);
                cmd
            }
        };
        cmd.args(["-display", "none"]);
        match &opts.monitor_socket {
            Some(path) => cmd
                .arg("-monitor")
                .arg(format!("unix:{},server=on,wait=off", path.display())),
            None => cmd.args(["-monitor", "none"]),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("starting qemu-system-aarch64 (run `make deps`)")?;
        let console = Arc::new(Mutex::new(String::new()));
        let mut log = match &opts.console_log {
            Some(path) => Some(
                fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
            ),
            None => None,
        };
        let echo = std::env::var_os("BRAMBLE_TEST_CONSOLE").is_some();
        if let Some(stdout) = child.stdout.take() {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut buf = [0u8; 4096];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if let Some(log) = log.as_mut() {
                        let _ = log.write_all(text.as_bytes());
                    }
                    if echo {
                        eprint!("{text}");
                    }
                    if let Ok(mut c) = console.lock() {
                        c.push_str(&text);
                        if c.len() > CONSOLE_CAP {
                            let cut = c.len() - CONSOLE_CAP / 2;
                            let cut = (cut..c.len())
                                .find(|&i| c.is_char_boundary(i))
                                .unwrap_or(c.len());
                            c.drain(..cut);
                        }
                    }
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr)
                    .lines()
                    .map_while(std::result::Result::ok)
                {
                    if let Ok(mut c) = console.lock() {
                        c.push_str(&format!("\n[qemu] {line}\n"));
                    }
                }
            });
        }
        Ok(Self {
            child,
            console,
            api_port: opts.api_port,
            monitor: opts.monitor_socket.clone(),
            started: Instant::now(),
        })
    }

    /// Everything the node printed so far.
    pub fn console(&self) -> String {
        self.console.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The last `lines` lines of the console, for error messages.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = self.console();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the console contains `needle`, QEMU exits, or `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before the console showed {needle:?}; console tail:\n{}",
                    self.console_tail(60)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the console did not show {needle:?} within {timeout:?}; console tail:\n{}",
                    self.console_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the node to report its API ready.
    /// Starts a node and waits until its console says the API is ready.
    pub fn boot(opts: &Options, timeout: Duration) -> Result<Self> {
        let mut node = Self::start(opts)?;
        node.wait_ready(timeout)?;
        Ok(node)
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for(READY_MARKER, timeout)
    }

    /// The API's forwarded loopback address (a [`Network::User`] node; a
    /// [`Network::Lan`] node is reached at its own address on the bridge).
    pub fn api_addr(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// Sends a command to the QEMU monitor.
    pub fn monitor(&self, command: &str) -> Result<()> {
        let path = self
            .monitor
            .as_ref()
            .context("this node was started without a monitor socket")?;
        let mut stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        // Give QEMU a moment to read the command before the socket closes.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    /// Plugs QEMU's `usb-net` adapter (CDC Ethernet / RNDIS) into a
    /// `raspi3b` node's USB host, on the user-mode network carrying the API
    /// port. Needs a monitor socket.
    ///
    /// Why plugged and not present from power-on: QEMU 7.2's DWC2 model
    /// flags a device's connection (HPRT0 connect-detect) only when it
    /// attaches, and does not implement the core soft reset that would
    /// flag it again. Debian's Pi U-Boot runs `usb start` before booting and
    /// acknowledges that flag, so Linux's dwc2 driver, which learns of a
    /// connection only from that interrupt, then refuses every transfer to
    /// the device ("dwc2 3f980000.usb: Not connected") and it never
    /// enumerates. Plugged in after boot, it enumerates like any hot-plugged
    /// USB device.
    pub fn plug_usb_net(&self) -> Result<()> {
        self.monitor(&format!(
            "device_add usb-net,netdev={USB_NETDEV},id=usbnet0"
        ))
    }

    /// Presses the virtual power button (an orderly power-off request).
    pub fn press_power_button(&self) -> Result<()> {
        self.monitor("system_powerdown")
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU still running after {timeout:?}; console tail:\n{}",
                    self.console_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// QEMU's exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Pulls the plug.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

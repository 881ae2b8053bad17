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

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
        }
    }

    /// The QEMU command line: the `virt` machine with U-Boot as its firmware,
    /// so the image boots through the same boot script as on a Pi.
    pub fn command(&self, uboot: &Path) -> Command {
        let mut cmd = Command::new("qemu-system-aarch64");
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
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:50000",
                self.api_port
            ))
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
            .args(["-device", "virtio-rng-pci"])
            .arg("-no-reboot");
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
        let uboot = crate::paths::uboot_qemu()?;
        let mut cmd = opts.command(&uboot);
        cmd.args(["-display", "none", "-serial", "stdio"]);
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
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for(READY_MARKER, timeout)
    }

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

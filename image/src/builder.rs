//! `bramble-image build`: from pinned packages, boot assets and the cross-built
//! binaries to `dist/`, without root, loop devices or mounts.
//!
//! Outputs are made in a staging directory next to `--out` and renamed into
//! `--out` only once every one of them is complete, so a failed build leaves the
//! previous outputs (or none) and never a partial image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::content::{self, BINARIES, ModuleFiles, RootfsInputs};
use crate::deb::{self, Kind};
use crate::disk::{self, Contents, Layout};
use crate::error::{Error, Result};
use crate::lock::{self, Lock};
use crate::mkext4::{self, Ext4Spec};
use crate::modules::{self, ModuleSet};
use crate::packages::{self, Content, FileList};
use crate::{fat, squashfs, uimage};

/// File name of the raw image.
pub const IMG: &str = "bramble-arm64.img";
/// File name of the compressed image.
pub const IMG_XZ: &str = "bramble-arm64.img.xz";
/// File name of the block map.
pub const IMG_BMAP: &str = "bramble-arm64.img.bmap";
/// File name of the checksum list.
pub const SUMS: &str = "SHA256SUMS";
/// File name of the Raspberry Pi Imager repository (an `os_list` of one entry).
pub const IMAGER_JSON: &str = "bramble-rpi-imager.json";
/// Raspberry Pi Imager device tags the image is offered for: Imager files the
/// Pi 400 and the CM4 under `pi4-64bit`, the Pi 3 family under `pi3-64bit`.
pub const IMAGER_DEVICES: [&str; 2] = ["pi4-64bit", "pi3-64bit"];
pub use bramble_disk::BOOT_LABEL;
use bramble_disk::{
    BOOT_PARTITION, DATA_LABEL, DATA_PARTITION, SLOT_A_PARTITION, SLOT_B_PARTITION, STATE_LABEL,
    STATE_PARTITION,
};
/// Name in the boot script's header.
pub const SCRIPT_NAME: &str = "Bramble boot script";

/// Raspberry Pi firmware files copied to the FAT root.
pub const FIRMWARE: [&str; 9] = [
    "bootcode.bin",
    "start.elf",
    "fixup.dat",
    "start_cd.elf",
    "fixup_cd.dat",
    "start4.elf",
    "fixup4.dat",
    "start4cd.elf",
    "fixup4cd.dat",
];

/// Device trees copied to the FAT root.
pub const DTBS: [&str; 8] = [
    "bcm2711-rpi-4-b.dtb",
    "bcm2711-rpi-400.dtb",
    "bcm2711-rpi-cm4-io.dtb",
    "bcm2837-rpi-3-a-plus.dtb",
    "bcm2837-rpi-3-b.dtb",
    "bcm2837-rpi-3-b-plus.dtb",
    "bcm2837-rpi-cm3-io3.dtb",
    "bcm2837-rpi-zero-2-w.dtb",
];

const FIRMWARE_PACKAGE: &str = "raspi-firmware";
const UBOOT_PACKAGE: &str = "u-boot-rpi";
const UBOOT_PATH: &str = "usr/lib/u-boot/rpi_arm64/u-boot.bin";
const CA_PACKAGE: &str = "ca-certificates";
const CA_DIR: &str = "usr/share/ca-certificates/mozilla/";

/// Everything `build` needs.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// `boot/packages.lock`.
    pub lock: PathBuf,
    /// Directory of cached `.deb`s.
    pub cache: PathBuf,
    /// `boot/`: `boot.cmd`, `config.txt`, `bramble-extra.txt`, `cmdline.txt`, `modules.txt`,
    /// `modules-rootfs.txt`, `rootfs-packages.txt`.
    pub boot_dir: PathBuf,
    /// Directory with `bramble-init`, `bramble-apid`, `bramble-networkd`, `timed`.
    pub bin_dir: PathBuf,
    /// Tree copied into the rootfs.
    pub rootfs_overlay: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Image version (`VERSION_ID`).
    pub version: String,
    /// Source revision (`BUILD_ID`).
    pub git_revision: String,
    /// Every timestamp in the image.
    pub source_date_epoch: u64,
    /// Where the release's files will be downloaded from (the Imager entry's
    /// `url` is this, `/`, the `.xz` name); empty: the bare file name.
    pub release_base_url: String,
}

/// Sizes and facts for the summary.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Kernel release.
    pub kver: String,
    /// Number of kernel modules shipped.
    pub modules: usize,
    /// Requested modules that are built in (skipped).
    pub builtin_requested: Vec<String>,
    /// Files and links from pinned packages in the root file system
    /// (`rootfs-packages.txt`), and the bytes of those files.
    pub package_files: (usize, u64),
    /// `(what, used bytes, partition bytes)`.
    pub partitions: Vec<(String, u64, u64)>,
    /// `(path, bytes)` of every output.
    pub outputs: Vec<(PathBuf, u64)>,
    /// Mapped 4 KiB blocks in the bmap.
    pub mapped_blocks: u64,
    /// `(step, seconds)`.
    pub timings: Vec<(String, f64)>,
}

impl Report {
    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        s.push_str(&format!(
            "Bramble image: kernel {}, {} modules\n",
            self.kver, self.modules
        ));
        s.push_str(&format!(
            "Root filesystem: {} files and links from pinned packages ({:.2} MiB)\n",
            self.package_files.0,
            mib(self.package_files.1)
        ));
        s.push_str("Partitions (used / size):\n");
        for (what, used, size) in &self.partitions {
            s.push_str(&format!(
                "  {what:<24} {:>9.2} MiB / {:>7.1} MiB\n",
                mib(*used),
                mib(*size)
            ));
        }
        s.push_str("Outputs:\n");
        for (path, size) in &self.outputs {
            s.push_str(&format!(
                "  {:<44} {:>9.2} MiB\n",
                path.display(),
                mib(*size)
            ));
        }
        s.push_str(&format!(
            "bmap: {} of 4 KiB blocks mapped ({:.1} MiB)\n",
            self.mapped_blocks,
            mib(self.mapped_blocks * 4096)
        ));
        let total: f64 = self.timings.iter().map(|(_, t)| t).sum();
        let steps: Vec<String> = self
            .timings
            .iter()
            .map(|(n, t)| format!("{n} {t:.1}s"))
            .collect();
        s.push_str(&format!("Time: {total:.1}s ({})\n", steps.join(", ")));
        s
    }
}

struct Timer {
    start: Instant,
    timings: Vec<(String, f64)>,
}

impl Timer {
    fn step(&mut self, name: &str) {
        let now = Instant::now();
        self.timings
            .push((name.to_string(), (now - self.start).as_secs_f64()));
        self.start = now;
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(Error::io(path))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(Error::io(path))
}

/// The kernel package, unpacked.
#[derive(Debug)]
pub struct Kernel {
    /// Kernel release (`6.1.0-56-arm64`).
    pub kver: String,
    /// `boot/vmlinuz-<kver>` as shipped (an arm64 Image; gzip-compressed in
    /// older packages, which `booti` also unpacks).
    pub vmlinuz: Vec<u8>,
    /// All loadable modules.
    pub modules: ModuleSet,
    /// `modules.builtin`.
    pub modules_builtin: Vec<u8>,
    /// Pi device trees by file name.
    pub dtbs: BTreeMap<String, Vec<u8>>,
}

/// Reads what the image needs out of the kernel `.deb`.
pub fn read_kernel(package: &str, deb_path: &Path, deb: &[u8]) -> Result<Kernel> {
    let mut kvers: BTreeMap<String, ()> = BTreeMap::new();
    let mut vmlinuz: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut builtin: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut dtbs: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
    let mut kos: Vec<(String, String, Vec<u8>)> = Vec::new();
    deb::for_each_file(deb_path, deb, |path, kind, r| {
        if let Some(rest) = path.strip_prefix("lib/modules/") {
            let (kver, rel) = rest.split_once('/').unwrap_or((rest, ""));
            if kind == Kind::Dir && rel.is_empty() {
                kvers.insert(kver.to_string(), ());
            }
            if kind == Kind::File && rel.starts_with("kernel/") && rel.ends_with(".ko") {
                kos.push((kver.to_string(), rel.to_string(), deb::read_all(path, r)?));
            } else if kind == Kind::File && rel == "modules.builtin" {
                builtin.insert(kver.to_string(), deb::read_all(path, r)?);
            }
        } else if let Some(kver) = path.strip_prefix("boot/vmlinuz-") {
            if kind == Kind::File {
                vmlinuz.insert(kver.to_string(), deb::read_all(path, r)?);
            }
        } else if let Some((kver, name)) = path
            .strip_prefix("usr/lib/linux-image-")
            .and_then(|rest| rest.split_once("/broadcom/"))
            && kind == Kind::File
            && DTBS.contains(&name)
        {
            dtbs.insert(
                (kver.to_string(), name.to_string()),
                deb::read_all(path, r)?,
            );
        }
        Ok(())
    })?;
    let missing = |member: String| Error::MissingInPackage {
        package: package.to_string(),
        member,
    };
    for (kver, _, _) in &kos {
        kvers.insert(kver.clone(), ());
    }
    let kver = match kvers.len() {
        1 => kvers.keys().next().cloned().unwrap_or_default(),
        0 => return Err(missing("lib/modules/<kernel release>/".into())),
        _ => {
            return Err(Error::BadDeb {
                path: deb_path.to_path_buf(),
                reason: format!(
                    "more than one kernel release under lib/modules/: {}",
                    kvers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    };
    let vmlinuz = vmlinuz
        .remove(&kver)
        .ok_or_else(|| missing(format!("boot/vmlinuz-{kver}")))?;
    let modules_builtin = builtin
        .remove(&kver)
        .ok_or_else(|| missing(format!("lib/modules/{kver}/modules.builtin")))?;
    let mut set = ModuleSet::default();
    for (_, rel, data) in kos {
        set.add(&rel, data)?;
    }
    set.set_builtin(&String::from_utf8_lossy(&modules_builtin));
    let mut by_name = BTreeMap::new();
    for name in DTBS {
        let data = dtbs
            .remove(&(kver.clone(), name.to_string()))
            .ok_or_else(|| missing(format!("usr/lib/linux-image-{kver}/broadcom/{name}")))?;
        by_name.insert(name.to_string(), data);
    }
    Ok(Kernel {
        kver,
        vmlinuz,
        modules: set,
        modules_builtin,
        dtbs: by_name,
    })
}

/// Reads the files `wanted(path)` selects from a `.deb`, by path.
pub fn read_files(
    deb_path: &Path,
    deb: &[u8],
    wanted: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    deb::for_each_file(deb_path, deb, |path, kind, r| {
        if kind == Kind::File && wanted(path) {
            out.insert(path.to_string(), deb::read_all(path, r)?);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Derives 32 bytes of identity (disk signature, UUIDs, volume id) from the
/// build's inputs, so they are stable for the same inputs.
fn identity(seed: &[u8], what: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(what.as_bytes());
    h.finalize().into()
}

fn u32_of(b: &[u8; 32]) -> u32 {
    let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if v == 0 { 1 } else { v }
}

/// Checks the `--version`, `--git-revision` and SOURCE_DATE_EPOCH values.
pub fn check_config(cfg: &BuildConfig) -> Result<()> {
    content::check_token("--version", &cfg.version)?;
    content::check_token("--git-revision", &cfg.git_revision)?;
    if cfg.source_date_epoch > u64::from(u32::MAX) {
        return Err(Error::Invalid {
            field: "SOURCE_DATE_EPOCH".into(),
            reason: format!(
                "{} is past 2106; squashfs, cpio and U-Boot store 32-bit times",
                cfg.source_date_epoch
            ),
        });
    }
    Ok(())
}

/// Reads and checks the node binaries ([`BINARIES`]).
pub fn read_binaries(bin_dir: &Path) -> Result<[Arc<[u8]>; BINARIES.len()]> {
    let mut out: Vec<Arc<[u8]>> = Vec::new();
    for (name, _) in BINARIES {
        let path = bin_dir.join(name);
        let data = std::fs::read(&path).map_err(|e| Error::BadBinary {
            path: path.clone(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "missing: cross-build the node binaries first (cargo build --release --target aarch64-unknown-linux-musl)".into()
            } else {
                e.to_string()
            },
        })?;
        crate::elf::check_aarch64_static(&path, &data)?;
        out.push(Arc::from(data));
    }
    out.try_into().map_err(|_| Error::Invalid {
        field: "--bin-dir".into(),
        reason: "internal: wrong number of binaries".into(),
    })
}

/// `bramble.env` for U-Boot's `env import -t`.
pub fn bramble_env(cmdline_txt: &str) -> Result<String> {
    let cmdline = cmdline_txt.trim();
    if cmdline.contains('\n') || cmdline.contains('\r') {
        return Err(Error::Invalid {
            field: "cmdline.txt".into(),
            reason: "the kernel command line must be a single line".into(),
        });
    }
    Ok(format!("bramble_slot=A\nbramble_cmdline={cmdline}\n"))
}

/// Builds the image; see the module documentation.
pub fn build(cfg: &BuildConfig) -> Result<Report> {
    check_config(cfg)?;
    let mut timer = Timer {
        start: Instant::now(),
        timings: Vec::new(),
    };
    let mut report = Report::default();
    let sde = cfg.source_date_epoch;
    let sde32 = sde as u32;

    // Inputs: every pinned package is checked before anything looks inside it.
    let lock_text = read_text(&cfg.lock)?;
    let lock = Lock::parse(&cfg.lock, &lock_text)?;
    let kernel_entry = lock.get_prefixed("linux-image-")?.clone();
    for name in [FIRMWARE_PACKAGE, UBOOT_PACKAGE, CA_PACKAGE] {
        lock.get(name)?;
    }
    tracing::info!(packages = lock.entries.len(), cache = %cfg.cache.display(), "checking pinned packages");
    let rootfs_list = FileList::load(&cfg.boot_dir.join(packages::ROOTFS_PACKAGES))?;
    rootfs_list.check_pinned(&lock)?;
    let mut debs = lock::verify_all(&lock, &cfg.cache)?;
    timer.step("verify");

    let boot_cmd = read(&cfg.boot_dir.join("boot.cmd"))?;
    let config_txt = read(&cfg.boot_dir.join("config.txt"))?;
    let extra_txt = read(&cfg.boot_dir.join("bramble-extra.txt"))?;
    let cmdline_path = cfg.boot_dir.join("cmdline.txt");
    let cmdline_txt = read_text(&cmdline_path)?;
    let module_list = |name: &str| -> Result<(String, Vec<(usize, String)>)> {
        let path = cfg.boot_dir.join(name);
        let what = path.display().to_string();
        let list = modules::parse_list(&what, &read_text(&path)?)?;
        Ok((what, list))
    };
    // Stage 1's modules go into the initramfs and the root filesystem; the
    // rest only into the root filesystem, where PID 1 (as modprobe) loads
    // them when the kernel asks.
    let (initrd_what, initrd_requested) = module_list("modules.txt")?;
    let (rootfs_what, rootfs_requested) = module_list("modules-rootfs.txt")?;
    let env_txt = bramble_env(&cmdline_txt)?;
    let binaries = read_binaries(&cfg.bin_dir)?;

    // Unpack.
    let deb_path = |e: &lock::LockEntry| cfg.cache.join(&e.file);
    let take =
        |debs: &mut BTreeMap<String, Vec<u8>>, name: &str| debs.remove(name).unwrap_or_default();
    tracing::info!(package = %kernel_entry.name, "reading kernel package");
    let kernel = read_kernel(
        &kernel_entry.name,
        &deb_path(&kernel_entry),
        &take(&mut debs, &kernel_entry.name),
    )?;
    let fw_entry = lock.get(FIRMWARE_PACKAGE)?;
    let mut firmware = read_files(
        &deb_path(fw_entry),
        &take(&mut debs, FIRMWARE_PACKAGE),
        |p| {
            p.strip_prefix("usr/lib/raspi-firmware/")
                .is_some_and(|n| FIRMWARE.contains(&n))
        },
    )?;
    let uboot_entry = lock.get(UBOOT_PACKAGE)?;
    let mut uboot = read_files(
        &deb_path(uboot_entry),
        &take(&mut debs, UBOOT_PACKAGE),
        |p| p == UBOOT_PATH,
    )?;
    let uboot_bin = uboot
        .remove(UBOOT_PATH)
        .ok_or_else(|| Error::MissingInPackage {
            package: UBOOT_PACKAGE.into(),
            member: UBOOT_PATH.into(),
        })?;
    let ca_entry = lock.get(CA_PACKAGE)?;
    let certs = read_files(&deb_path(ca_entry), &take(&mut debs, CA_PACKAGE), |p| {
        p.strip_prefix(CA_DIR)
            .is_some_and(|n| n.ends_with(".crt") && !n.contains('/'))
    })?;
    if certs.is_empty() {
        return Err(Error::MissingInPackage {
            package: CA_PACKAGE.into(),
            member: format!("{CA_DIR}*.crt"),
        });
    }
    tracing::info!(list = %rootfs_list.path.display(), "reading files from pinned packages");
    let package_files = rootfs_list.extract(&lock, &cfg.cache, &debs)?;
    drop(debs);
    report.package_files = (
        package_files.len(),
        package_files
            .iter()
            .map(|f| match &f.content {
                Content::File { data, .. } => data.len() as u64,
                Content::Symlink(_) => 0,
            })
            .sum(),
    );
    let ca_bundle = content::ca_bundle(&certs);
    timer.step("unpack");

    // Modules. Each list is resolved alone first, so an error names its file
    // and line; the root filesystem gets both.
    let initrd_selection = kernel.modules.select(&initrd_what, &initrd_requested)?;
    kernel.modules.select(&rootfs_what, &rootfs_requested)?;
    let both: Vec<(usize, String)> = initrd_requested
        .iter()
        .chain(&rootfs_requested)
        .cloned()
        .collect();
    let selection = kernel
        .modules
        .select(&format!("{initrd_what} and {rootfs_what}"), &both)?;
    for b in &selection.builtin_requested {
        tracing::info!(module = %b, "built into the kernel; skipped");
    }
    report.kver = kernel.kver.clone();
    report.modules = selection.modules.len();
    report.builtin_requested = selection.builtin_requested.clone();
    let module_files = ModuleFiles::new(&kernel.kver, &selection, &kernel.modules_builtin);
    let initrd_module_files =
        ModuleFiles::new(&kernel.kver, &initrd_selection, &kernel.modules_builtin);
    tracing::info!(kver = %kernel.kver, selected = selection.modules.len(), "kernel modules resolved");

    // Root file system and initramfs.
    let release = content::os_release(&cfg.version, &cfg.git_revision);
    let rootfs_tree = content::rootfs(&RootfsInputs {
        binaries: &binaries,
        os_release: &release,
        ca_bundle: &ca_bundle,
        modules: &module_files,
        package_files: &package_files,
        overlay: &cfg.rootfs_overlay,
    })?;
    // What the list adds must run on the node: aarch64, with its loader and
    // libraries in the tree.
    let listed_files: Vec<String> = package_files
        .iter()
        .filter(|f| matches!(f.content, Content::File { .. }))
        .map(|f| f.path.clone())
        .collect();
    crate::elf::check_loadable(&rootfs_tree, &listed_files)?;
    let initrd_tree = content::initrd(&binaries[0], &release, &initrd_module_files)?;
    let mut cpio = Vec::new();
    initrd_tree.write_cpio(&mut cpio, sde32)?;
    let initrd = crate::lz4::compress_legacy(&cpio);
    drop(cpio);
    timer.step("initramfs");
    tracing::info!(entries = rootfs_tree.len(), "writing the root squashfs");
    let rootfs = squashfs::build(&rootfs_tree, sde32)?;
    timer.step("squashfs");

    // Identity derived from the inputs.
    let mut seed = Sha256::new();
    seed.update(b"bramble-image/1\0");
    for part in [
        cfg.version.as_bytes(),
        cfg.git_revision.as_bytes(),
        &sde.to_le_bytes(),
        lock_text.as_bytes(),
    ] {
        seed.update((part.len() as u64).to_le_bytes());
        seed.update(part);
    }
    let seed: [u8; 32] = seed.finalize().into();
    let layout = Layout::bramble(u32_of(&identity(&seed, "disk signature")));

    // Boot partition.
    let boot_scr =
        uimage::script_image(&boot_cmd, SCRIPT_NAME, sde32).map_err(|e| Error::Invalid {
            field: cfg.boot_dir.join("boot.cmd").display().to_string(),
            reason: e.to_string(),
        })?;
    let mut fw_files: Vec<(&str, Vec<u8>)> = Vec::new();
    for name in FIRMWARE {
        let data = firmware
            .remove(&format!("usr/lib/raspi-firmware/{name}"))
            .ok_or_else(|| Error::MissingInPackage {
                package: FIRMWARE_PACKAGE.into(),
                member: format!("usr/lib/raspi-firmware/{name}"),
            })?;
        fw_files.push((name, data));
    }
    let mut fat_refs: Vec<(&str, &[u8])> =
        fw_files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    fat_refs.push(("config.txt", &config_txt));
    fat_refs.push(("bramble-extra.txt", &extra_txt));
    fat_refs.push(("cmdline.txt", cmdline_txt.as_bytes()));
    fat_refs.push(("bramble.env", env_txt.as_bytes()));
    fat_refs.push(("u-boot.bin", &uboot_bin));
    fat_refs.push(("boot.scr", &boot_scr));
    for (name, data) in &kernel.dtbs {
        fat_refs.push((name.as_str(), data));
    }
    fat_refs.push(("A/vmlinuz", &kernel.vmlinuz));
    fat_refs.push(("A/initrd", &initrd));
    let (_, boot_size) = layout.bytes(BOOT_PARTITION);
    let fat_used: u64 = fat_refs.iter().map(|(_, d)| d.len() as u64).sum();
    let boot = fat::build(
        boot_size,
        BOOT_LABEL,
        u32_of(&identity(&seed, "boot volume id")),
        sde,
        fat::Content {
            dirs: &["A", "B"],
            files: &fat_refs,
        },
    )?;
    timer.step("fat");

    // Staging directory next to --out.
    let out_parent = match cfg.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&out_parent).map_err(Error::io(&out_parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".bramble-image-staging-")
        .tempdir_in(&out_parent)
        .map_err(Error::io(&out_parent))?;
    let st = staging.path();

    let ext4 = |label: &'static str, index: u32| -> Result<Vec<u8>> {
        let id = identity(&seed, label);
        let spec = Ext4Spec {
            label,
            size: layout.bytes(index).1,
            uuid: mkext4::uuid_from(&id[..16]),
            hash_seed: mkext4::uuid_from(&id[16..]),
            time: sde,
        };
        mkext4::make(&st.join(format!("{label}.ext4")), st, &spec)
    };
    let state = ext4(STATE_LABEL, STATE_PARTITION)?;
    let data = ext4(DATA_LABEL, DATA_PARTITION)?;
    timer.step("ext4");

    let img_path = st.join(IMG);
    tracing::info!(bytes = layout.size_bytes(), "writing the raw image");
    disk::write_image(
        &img_path,
        &layout,
        &Contents {
            boot: &boot,
            root_a: &rootfs,
            state: &state,
            data: &data,
        },
    )?;
    drop((boot, state, data));
    timer.step("image");
    tracing::info!("compressing (xz), hashing and mapping the image");
    let derived = disk::derive(&img_path, &st.join(IMG_XZ))?;
    timer.step("xz+bmap");
    let bmap_path = st.join(IMG_BMAP);
    std::fs::write(&bmap_path, &derived.bmap).map_err(Error::io(&bmap_path))?;
    let imager = rpi_imager_json(
        cfg,
        layout.size_bytes(),
        &derived.img_sha256,
        derived.xz_size,
        &derived.xz_sha256,
    );
    std::fs::write(st.join(IMAGER_JSON), &imager).map_err(Error::io(st.join(IMAGER_JSON)))?;
    let sums = format!(
        "{}  {IMG}\n{}  {IMG_BMAP}\n{}  {IMG_XZ}\n{}  {IMAGER_JSON}\n",
        derived.img_sha256,
        lock::sha256_hex(derived.bmap.as_bytes()),
        derived.xz_sha256,
        lock::sha256_hex(imager.as_bytes())
    );
    std::fs::write(st.join(SUMS), &sums).map_err(Error::io(st.join(SUMS)))?;
    let parts = st.join("parts");
    std::fs::create_dir(&parts).map_err(Error::io(&parts))?;
    std::fs::write(parts.join("rootfs.squashfs"), &rootfs).map_err(Error::io(&parts))?;
    std::fs::write(parts.join("initrd.img"), &initrd).map_err(Error::io(&parts))?;

    // Everything is complete: move it into --out, replacing old outputs file by file
    // (each rename is atomic; SHA256SUMS last).
    std::fs::create_dir_all(&cfg.out).map_err(Error::io(&cfg.out))?;
    let out_parts = cfg.out.join("parts");
    std::fs::create_dir_all(&out_parts).map_err(Error::io(&out_parts))?;
    for rel in [
        "parts/rootfs.squashfs",
        "parts/initrd.img",
        IMG,
        IMG_XZ,
        IMG_BMAP,
        IMAGER_JSON,
        SUMS,
    ] {
        let from = st.join(rel);
        let to = cfg.out.join(rel);
        std::fs::rename(&from, &to).map_err(Error::io(&to))?;
        let size = std::fs::metadata(&to).map_err(Error::io(&to))?.len();
        report.outputs.push((to, size));
    }
    drop(staging);
    timer.step("finish");

    report.partitions = vec![
        ("p1 boot (FAT32 BRAMBLE)".into(), fat_used, boot_size),
        (
            "p2 root A (squashfs)".into(),
            rootfs.len() as u64,
            layout.bytes(SLOT_A_PARTITION).1,
        ),
        (
            "p3 root B (empty)".into(),
            0,
            layout.bytes(SLOT_B_PARTITION).1,
        ),
        ("p5 STATE (ext4)".into(), 0, layout.bytes(STATE_PARTITION).1),
        ("p6 DATA (ext4)".into(), 0, layout.bytes(DATA_PARTITION).1),
        ("  initramfs (LZ4 cpio)".into(), initrd.len() as u64, 0),
        ("  kernel (vmlinuz)".into(), kernel.vmlinuz.len() as u64, 0),
    ];
    report.mapped_blocks = derived.mapped_blocks;
    report.timings = timer.timings;
    Ok(report)
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The Raspberry Pi Imager repository file: an `os_list` with one entry for the
/// `.xz` (sizes and sha256 of the raw image and of the download, the release
/// date from SOURCE_DATE_EPOCH). No `init_format`: Imager's OS customisation
/// (users, SSH, Wi-Fi) does not apply to Bramble, which is configured through
/// its API (or `nodectl image flash --config`).
pub fn rpi_imager_json(
    cfg: &BuildConfig,
    extract_size: u64,
    extract_sha256: &str,
    download_size: u64,
    download_sha256: &str,
) -> String {
    let (y, m, d, ..) = crate::time::utc(cfg.source_date_epoch);
    let base = cfg.release_base_url.trim_end_matches('/');
    let url = if base.is_empty() {
        IMG_XZ.to_owned()
    } else {
        format!("{base}/{IMG_XZ}")
    };
    let devices: Vec<String> = IMAGER_DEVICES.iter().map(|d| json_string(d)).collect();
    format!(
        "{{\n  \"os_list\": [\n    {{\n      \"name\": {},\n      \"description\": {},\n      \
         \"url\": {},\n      \"extract_size\": {extract_size},\n      \"extract_sha256\": {},\n      \
         \"image_download_size\": {download_size},\n      \"image_download_sha256\": {},\n      \
         \"release_date\": \"{y:04}-{m:02}-{d:02}\",\n      \"devices\": [{}]\n    }}\n  ]\n}}\n",
        json_string(&format!("Bramble {} (64-bit)", cfg.version)),
        json_string(&format!(
            "Immutable, API-managed OS for Raspberry Pi cluster nodes (build {}). No shell, no SSH: configure it with nodectl.",
            cfg.git_revision
        )),
        json_string(&url),
        json_string(extract_sha256),
        json_string(download_sha256),
        devices.join(", ")
    )
}

/// `bramble-image verify-lock`: checks every cached package against the lock.
pub fn verify_lock(lock_path: &Path, cache: &Path) -> Result<Vec<(String, String)>> {
    let lock = Lock::load(lock_path)?;
    let mut out = Vec::new();
    for e in &lock.entries {
        lock::read_verified(cache, e)?;
        out.push((e.name.clone(), e.file.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imager_json() {
        let cfg = BuildConfig {
            lock: PathBuf::new(),
            cache: PathBuf::new(),
            boot_dir: PathBuf::new(),
            bin_dir: PathBuf::new(),
            rootfs_overlay: PathBuf::new(),
            out: PathBuf::new(),
            version: "0.1.0".into(),
            git_revision: "abc\"def".into(),
            source_date_epoch: 1_700_000_000,
            release_base_url: "https://example.org/r/".into(),
        };
        let j = rpi_imager_json(&cfg, 10, &"a".repeat(64), 5, &"b".repeat(64));
        assert!(
            j.contains("\"url\": \"https://example.org/r/bramble-arm64.img.xz\""),
            "{j}"
        );
        assert!(j.contains("\"release_date\": \"2023-11-14\""), "{j}");
        assert!(j.contains("\"extract_size\": 10,"), "{j}");
        assert!(j.contains("\"image_download_size\": 5,"), "{j}");
        assert!(
            j.contains("\"devices\": [\"pi4-64bit\", \"pi3-64bit\"]"),
            "{j}"
        );
        assert!(j.contains("build abc\\\"def"), "{j}");
        let cfg = BuildConfig {
            release_base_url: String::new(),
            ..cfg
        };
        let j = rpi_imager_json(&cfg, 10, "x", 5, "y");
        assert!(j.contains("\"url\": \"bramble-arm64.img.xz\""), "{j}");
    }

    #[test]
    fn env_file() {
        assert_eq!(
            bramble_env("console=ttyAMA0,115200 panic=10\n").unwrap(),
            "bramble_slot=A\nbramble_cmdline=console=ttyAMA0,115200 panic=10\n"
        );
        assert!(bramble_env("a\nb\n").is_err());
    }
}

//! End-to-end: real image builds from the real package cache.
//!
//! Needs the pinned `.deb`s in `<workspace>/.cache/debs` (`make deps`); without them
//! each test fails and says so. The node binaries come
//! from `$BRAMBLE_BIN_DIR` if set, otherwise tiny stand-in aarch64 executables are
//! used (the builder only checks that they are static aarch64 ELF files).

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use bramble_disk::mbr;
use bramble_image::builder::{self, BuildConfig, IMAGER_JSON, IMG, IMG_BMAP, IMG_XZ, SUMS};
use bramble_image::{cpio, uimage};

const SDE: u64 = 1_700_000_000;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cache() -> PathBuf {
    let dir = workspace().join(".cache/debs");
    let lock = std::fs::read_to_string(workspace().join("boot/packages.lock")).unwrap();
    let missing: Vec<&str> = lock
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|f| !dir.join(f).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "the pinned packages {missing:?} are not in {} (run `make deps`)",
        dir.display()
    );
    dir
}

fn bin_dir(scratch: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os("BRAMBLE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let d = scratch.join("bin");
    std::fs::create_dir_all(&d).unwrap();
    for (name, _) in bramble_image::content::BINARIES {
        std::fs::write(d.join(name), bramble_image::elf::dummy_aarch64_executable()).unwrap();
    }
    d
}

fn config(cache: &Path, bins: &Path, out: &Path) -> BuildConfig {
    let ws = workspace();
    BuildConfig {
        lock: ws.join("boot/packages.lock"),
        cache: cache.to_path_buf(),
        boot_dir: ws.join("boot"),
        bin_dir: bins.to_path_buf(),
        rootfs_overlay: ws.join("image/rootfs"),
        out: out.to_path_buf(),
        version: "0.1.0".into(),
        git_revision: "e2etest".into(),
        source_date_epoch: SDE,
        release_base_url: "https://example.org/bramble/v0.1.0".into(),
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// One build by the real CLI into `out`, in its own process under the given
/// `TZ` and umask; the kernel version its summary names.
fn cli_build(cache: &Path, bins: &Path, out: &Path, tz: &str, umask: &str) -> String {
    let ws = workspace();
    // The umask is per process: set by a shell that then becomes the builder.
    let output = Command::new("sh")
        .args(["-c", "umask \"$0\" && exec \"$@\"", umask])
        .arg(env!("CARGO_BIN_EXE_bramble-image"))
        .arg("build")
        .arg("--lock")
        .arg(ws.join("boot/packages.lock"))
        .arg("--cache")
        .arg(cache)
        .arg("--boot-dir")
        .arg(ws.join("boot"))
        .arg("--bin-dir")
        .arg(bins)
        .arg("--rootfs-overlay")
        .arg(ws.join("image/rootfs"))
        .arg("--out")
        .arg(out)
        .args(["--version", "0.1.0", "--git-revision", "e2etest"])
        .args(["--source-date-epoch", &SDE.to_string()])
        .args(["--release-base-url", "https://example.org/bramble/v0.1.0"])
        .env("TZ", tz)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "build into {} (TZ={tz}, umask {umask}) failed: {}\n{stdout}",
        out.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{stdout}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Bramble image: kernel "))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no kernel version in the build's summary:\n{stdout}"))
        .to_owned()
}

fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Builds twice, one build after the other, into two directories: the
/// second in a later wall-clock second, under another `TZ` and another
/// umask. Compares every output byte for byte, then checks the image's
/// structure with the library's readers.
#[test]
fn two_builds_are_identical_and_well_formed() {
    let cache = cache();
    let tmp = tempfile::tempdir().unwrap();
    let bins = bin_dir(tmp.path());
    let (a, b) = (tmp.path().join("a/dist"), tmp.path().join("b/dist"));
    let kver = cli_build(&cache, &bins, &a, "UTC0", "0022");
    // Nothing of the clock may reach the image: the second build starts in
    // a second the first never saw.
    let first_done = unix_second();
    bramble_testkit::wait_for(
        "the wall clock's second to change",
        std::time::Duration::from_secs(3),
        || (unix_second() != first_done).then_some(()),
    );
    // 12 or 13 hours from UTC (a POSIX TZ: no tzdata needed), and files
    // created without group or other permissions.
    let kver_b = cli_build(&cache, &bins, &b, "NZST-12NZDT,M9.5.0,M4.1.0/3", "0077");
    assert_eq!(kver, kver_b);

    let files = files_under(&a);
    assert_eq!(
        files,
        [
            "SHA256SUMS",
            "bramble-arm64.img",
            "bramble-arm64.img.bmap",
            "bramble-arm64.img.xz",
            "bramble-rpi-imager.json",
            "parts/initrd.img",
            "parts/rootfs.squashfs"
        ]
        .iter()
        .map(PathBuf::from)
        .collect::<Vec<_>>()
    );
    assert_eq!(files, files_under(&b));
    let differing: Vec<_> = files
        .iter()
        .filter(|f| std::fs::read(a.join(f)).unwrap() != std::fs::read(b.join(f)).unwrap())
        .collect();
    assert!(
        differing.is_empty(),
        "differ between the two builds: {differing:?}"
    );
    // No staging directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("dist")]);

    // SHA256SUMS lists the three image files with correct digests (checking the
    // small ones here; the raw image's digest was compared across builds above).
    let sums = std::fs::read_to_string(a.join(SUMS)).unwrap();
    let names: Vec<&str> = sums
        .lines()
        .map(|l| l.split("  ").nth(1).unwrap())
        .collect();
    assert_eq!(names, vec![IMG, IMG_BMAP, IMG_XZ, IMAGER_JSON]);
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(sum.len(), 64);
        if name != IMG {
            let data = std::fs::read(a.join(name)).unwrap();
            assert_eq!(sum, bramble_image::lock::sha256_hex(&data), "{name}");
        }
    }

    // The Raspberry Pi Imager entry describes the raw image and the .xz.
    let imager = std::fs::read_to_string(a.join(IMAGER_JSON)).unwrap();
    let sum_of = |name: &str| {
        sums.lines()
            .find_map(|l| l.strip_suffix(&format!("  {name}")))
            .unwrap()
            .to_owned()
    };
    let size_of = |name: &str| std::fs::metadata(a.join(name)).unwrap().len();
    for want in [
        format!("\"extract_size\": {},", size_of(IMG)),
        format!("\"extract_sha256\": \"{}\"", sum_of(IMG)),
        format!("\"image_download_size\": {},", size_of(IMG_XZ)),
        format!("\"image_download_sha256\": \"{}\"", sum_of(IMG_XZ)),
        "\"url\": \"https://example.org/bramble/v0.1.0/bramble-arm64.img.xz\"".to_owned(),
        "\"release_date\": \"".to_owned(),
    ] {
        assert!(imager.contains(&want), "{want} not in {imager}");
    }

    // Partition table.
    let mut img = File::open(a.join(IMG)).unwrap();
    let size = img.metadata().unwrap().len();
    let parts = mbr::read_partitions(&mut img).unwrap();
    let summary: Vec<_> = parts
        .iter()
        .map(|p| (p.index, p.kind, p.start_lba, p.sectors, p.bootable))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, 0x0c, 2048, 262_144, true),
            (2, 0x83, 264_192, 524_288, false),
            (3, 0x83, 788_480, 524_288, false),
            (4, 0x0f, 1_312_768, 200_704, false),
            (5, 0x83, 1_314_816, 65_536, false),
            (6, 0x83, 1_382_400, 131_072, false),
        ]
    );
    assert_eq!(parts[5].end_lba() * 512, size, "p6 ends the disk");

    // ext4 partitions.
    let sb = bramble_disk::ext4::read(&mut img, parts[4].start_bytes()).unwrap();
    assert_eq!((sb.size_bytes(), sb.label.as_str()), (32 << 20, "STATE"));
    let sb = bramble_disk::ext4::read(&mut img, parts[5].start_bytes()).unwrap();
    assert_eq!((sb.size_bytes(), sb.label.as_str()), (64 << 20, "DATA"));

    // Boot partition: label, files, boot.scr, bramble.env, the initramfs.
    use std::io::{Read, Seek, SeekFrom};
    let mut fat = vec![0u8; parts[0].size_bytes() as usize];
    img.seek(SeekFrom::Start(parts[0].start_bytes())).unwrap();
    img.read_exact(&mut fat).unwrap();
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(fat), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
    assert_eq!(fs.volume_label(), "BRAMBLE");
    let root = fs.root_dir();
    let read = |path: &str| {
        let mut v = Vec::new();
        root.open_file(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    for f in builder::FIRMWARE.iter().chain(builder::DTBS.iter()) {
        assert!(!read(f).is_empty(), "{f}");
    }
    for f in [
        "config.txt",
        "bramble-extra.txt",
        "cmdline.txt",
        "u-boot.bin",
        "A/vmlinuz",
    ] {
        assert!(!read(f).is_empty(), "{f}");
    }
    // The kernel goes in as Debian ships it: an arm64 Image (magic "ARM\x64"
    // at 0x38), or the same gzip-compressed in older packages.
    let vmlinuz = read("A/vmlinuz");
    assert!(
        vmlinuz.get(0x38..0x3c) == Some(b"ARM\x64".as_slice())
            || vmlinuz.starts_with(&[0x1f, 0x8b]),
        "A/vmlinuz is neither an arm64 Image nor gzip"
    );
    let env = String::from_utf8(read("bramble.env")).unwrap();
    assert!(
        env.starts_with("bramble_slot=A\nbramble_cmdline=console="),
        "{env}"
    );
    let scr = read("boot.scr");
    let (header, payload) = uimage::parse(&scr).unwrap();
    assert_eq!(header.time as u64, SDE);
    assert_eq!((header.os, header.arch, header.kind), (5, 22, 6));
    assert_eq!(
        uimage::script_of(payload).unwrap(),
        std::fs::read(workspace().join("boot/boot.cmd")).unwrap()
    );
    let b_dir: Vec<String> = root
        .open_dir("B")
        .unwrap()
        .iter()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "." && n != "..")
        .collect();
    assert!(b_dir.is_empty(), "B/ is empty: {b_dir:?}");

    let initrd = read("A/initrd");
    assert_eq!(initrd, std::fs::read(a.join("parts/initrd.img")).unwrap());
    let cpio_bytes = bramble_image::lz4::decompress_legacy(&initrd).unwrap();
    let entries = cpio::parse(&cpio_bytes).unwrap();
    let find = |n: &str| {
        entries
            .iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert_eq!(find("init").mode, 0o100_755);
    assert_eq!(find("dev/console").mode, 0o020_600);
    assert_eq!(find("dev/console").rdev, (5, 1));
    assert!(String::from_utf8_lossy(&find("etc/initrd-release").data).contains("ID=bramble"));
    for d in ["dev", "proc", "sys", "run", "sysroot", "tmp"] {
        assert_eq!(find(d).mode & 0o170_000, 0o040_000, "{d}");
    }
    let dep = String::from_utf8(
        find(&format!("lib/modules/{kver}/modules.dep"))
            .data
            .clone(),
    )
    .unwrap();
    assert!(dep.contains("kernel/fs/ext4/ext4.ko: "), "{dep}");
    // Modules stage 1 never loads (boot/modules-rootfs.txt) stay out of it.
    for ko in ["bonding.ko", "bridge.ko", "8021q.ko", "overlay.ko"] {
        assert!(!dep.contains(ko), "{ko} in the initramfs: {dep}");
    }
    assert!(
        find(&format!("lib/modules/{kver}/modules.alias"))
            .data
            .len()
            > 100
    );
    assert!(
        !find(&format!("lib/modules/{kver}/modules.builtin"))
            .data
            .is_empty()
    );
    for e in &entries {
        assert_eq!((e.uid, e.gid, e.mtime as u64), (0, 0, SDE), "{}", e.name);
    }
    // Every module in modules.dep is in the archive.
    for line in dep.lines() {
        for ko in line.replace(':', " ").split_whitespace() {
            find(&format!("lib/modules/{kver}/{ko}"));
        }
    }

    // The root file system in slot A is the squashfs from parts/.
    let sq = std::fs::read(a.join("parts/rootfs.squashfs")).unwrap();
    let mut on_disk = vec![0u8; sq.len()];
    img.seek(SeekFrom::Start(parts[1].start_bytes())).unwrap();
    img.read_exact(&mut on_disk).unwrap();
    assert!(on_disk == sq);
    assert_eq!(&sq[..4], b"hsqs");
    // The root filesystem has both module lists, and a modules.dep naming them.
    let rootfs = backhand::FilesystemReader::from_reader(std::io::Cursor::new(sq)).unwrap();
    let rootfs_dep = rootfs
        .files()
        .find(|n| n.fullpath == Path::new(&format!("/lib/modules/{kver}/modules.dep")))
        .and_then(|n| match &n.inner {
            backhand::InnerNode::File(f) => {
                let mut text = String::new();
                rootfs.file(f).reader().read_to_string(&mut text).unwrap();
                Some(text)
            }
            _ => None,
        })
        .expect("modules.dep in the root filesystem");
    for ko in [
        "bonding.ko",
        "8021q.ko",
        "overlay.ko",
        "ext4.ko",
        "virtio_net.ko",
    ] {
        assert!(rootfs_dep.contains(ko), "{ko} missing: {rootfs_dep}");
    }
}

/// A corrupted cached package stops the build before anything is written, with a
/// message naming the file, both digests and the fix.
#[test]
fn corrupted_cache_is_refused() {
    let cache = cache();
    let tmp = tempfile::tempdir().unwrap();
    let bad_cache = tmp.path().join("debs");
    std::fs::create_dir(&bad_cache).unwrap();
    for e in std::fs::read_dir(&cache).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad_cache.join(e.file_name())).unwrap();
    }
    let victim = std::fs::read_dir(&bad_cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("u-boot-rpi"))
        .unwrap();
    let mut data = std::fs::read(&victim).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x40;
    std::fs::write(&victim, &data).unwrap();

    let bins = bin_dir(tmp.path());
    let out = tmp.path().join("dist");
    let err = builder::build(&config(&bad_cache, &bins, &out))
        .unwrap_err()
        .to_string();
    let file = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&file), "{err}");
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(
        err.contains(&bramble_image::lock::sha256_hex(&data)),
        "{err}"
    );
    assert!(err.contains("make deps"), "{err}");
    assert!(!out.join(IMG).exists());
    // Nothing at all was left next to the output directory.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "debs" && n != "bin")
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A missing package is reported the same way.
    std::fs::remove_file(&victim).unwrap();
    let err = builder::build(&config(&bad_cache, &bins, &out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&file) && err.contains("not found") && err.contains("make deps"),
        "{err}"
    );
}

/// A missing or non-aarch64 node binary is refused by name.
#[test]
fn bad_binaries_are_refused() {
    let cache = cache();
    let tmp = tempfile::tempdir().unwrap();
    let bins = tmp.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    std::fs::write(
        bins.join("bramble-init"),
        bramble_image::elf::dummy_aarch64_executable(),
    )
    .unwrap();
    std::fs::write(
        bins.join("bramble-apid"),
        bramble_image::elf::dummy_aarch64_executable(),
    )
    .unwrap();
    let out = tmp.path().join("dist");
    let err = builder::build(&config(&cache, &bins, &out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bramble-networkd") && err.contains("missing"),
        "{err}"
    );
    std::fs::copy(
        std::env::current_exe().unwrap(),
        bins.join("bramble-networkd"),
    )
    .unwrap();
    let err = builder::build(&config(&cache, &bins, &out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bramble-networkd") && err.contains("not aarch64"),
        "{err}"
    );
    assert!(!out.join(IMG).exists());
}

/// The CLI needs a build time and says how to give one.
#[test]
fn cli_requires_source_date_epoch() {
    let out = Command::new(env!("CARGO_BIN_EXE_bramble-image"))
        .args(["build", "--lock", "x", "--cache", "x", "--boot-dir", "x"])
        .args(["--bin-dir", "x", "--rootfs-overlay", "x", "--out", "x"])
        .args(["--version", "0.1.0", "--git-revision", "r"])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SOURCE_DATE_EPOCH") && err.contains("--source-date-epoch"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_bramble-image"))
        .args(["build", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--lock",
        "--cache",
        "--boot-dir",
        "--bin-dir",
        "--rootfs-overlay",
        "--out",
        "--version",
        "--git-revision",
        "--source-date-epoch",
    ] {
        assert!(help.contains(opt), "{opt} missing from:\n{help}");
    }
}

//! Flashing onto regular files standing in for SD cards, with small synthetic
//! images made by the image builder's own writers (MBR, FAT32 `BRAMBLE`, bmap,
//! xz), and the real `dist/bramble-arm64.img` when `BRAMBLE_IMAGE` names it.

#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bramble_disk::mbr::{Partition, TYPE_FAT32_LBA, TYPE_LINUX, Table, write_table};
use bramble_flash::{Error, Options, Quiet, bootfs, prepare};
use bramble_image::bmap::BmapBuilder;
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// What the stand-in card is filled with before flashing: unmapped blocks keep it.
const FILL: u8 = 0xa5;
const CONFIG: &str = include_str!("../../../lib/config/tests/data/full.yaml");

/// Deterministic bytes that are never a whole zero block.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    img: PathBuf,
    xz: PathBuf,
    bytes: Vec<u8>,
}

/// A 48 MiB image: p1 FAT32 `BRAMBLE` (36 MiB) at 1 MiB with a file, p2 at
/// 37 MiB with 9 MiB of data in one run (longer than `CHUNK`, so it is
/// checked at its end) and a short run near its end. Next to it: `.bmap`,
/// `.xz`, `SHA256SUMS`, as the builder writes them.
fn fixture() -> Fixture {
    static BUILT: std::sync::OnceLock<(Vec<u8>, String, Vec<u8>)> = std::sync::OnceLock::new();
    let (img, bmap, xz) = BUILT.get_or_init(build);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let img_path = dir.join("bramble-arm64.img");
    fs::write(&img_path, img).unwrap();
    fs::write(dir.join("bramble-arm64.img.bmap"), bmap).unwrap();
    let xz_path = dir.join("bramble-arm64.img.xz");
    fs::write(&xz_path, xz).unwrap();
    let fixture = Fixture {
        _dir: tmp,
        dir,
        img: img_path,
        xz: xz_path,
        bytes: img.clone(),
    };
    fixture.write_sums();
    fixture
}

/// The image, its bmap and its xz (built once per test binary).
fn build() -> (Vec<u8>, String, Vec<u8>) {
    let size = 48 * MIB;
    let mut img = vec![0u8; size as usize];
    let fat = bramble_image::fat::build(
        36 * MIB,
        "BRAMBLE",
        0x1234_5678,
        1_700_000_000,
        bramble_image::fat::Content {
            dirs: &["A"],
            files: &[
                ("config.txt", b"arm_64bit=1\n"),
                ("A/initrd", &noise(100_000, 7)),
            ],
        },
    )
    .unwrap();
    img[MIB as usize..(37 * MIB) as usize].copy_from_slice(&fat);
    let p2 = (37 * MIB) as usize;
    img[p2..p2 + 9 * MIB as usize].copy_from_slice(&noise(9 * MIB as usize, 3));
    img[p2 + 10 * MIB as usize - 8192..p2 + 10 * MIB as usize - 100]
        .copy_from_slice(&noise(8192 - 100, 5));
    let table = Table {
        disk_signature: 0xb4a3_b1e0,
        primary: vec![
            Partition {
                index: 1,
                kind: TYPE_FAT32_LBA,
                start_lba: 2048,
                sectors: 36 * 2048,
                bootable: true,
            },
            Partition {
                index: 2,
                kind: TYPE_LINUX,
                start_lba: 37 * 2048,
                sectors: 10 * 2048,
                bootable: false,
            },
        ],
        logical: vec![],
    };
    write_table(&mut std::io::Cursor::new(&mut img[..]), &table).unwrap();

    let mut b = BmapBuilder::new();
    b.update(&img);
    let (bmap, _) = b.finish();
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 0);
    enc.write_all(&img).unwrap();
    let xz = enc.finish().unwrap();
    (img, bmap, xz)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Fixture {
    fn write_sums(&self) {
        let mut sums = String::new();
        for name in [
            "bramble-arm64.img",
            "bramble-arm64.img.bmap",
            "bramble-arm64.img.xz",
        ] {
            let data = fs::read(self.dir.join(name)).unwrap();
            sums.push_str(&format!("{}  {name}\n", sha256_hex(&data)));
        }
        fs::write(self.dir.join("SHA256SUMS"), sums).unwrap();
    }

    /// A stand-in card filled with [`FILL`], `extra` bytes bigger than the image.
    fn card(&self, extra: u64) -> PathBuf {
        let path = self.dir.join("card");
        let len = self.bytes.len() + extra as usize;
        fs::write(&path, vec![FILL; len]).unwrap();
        path
    }

    fn options(&self, device: &Path, image: &Path) -> Options {
        Options {
            device: device.to_path_buf(),
            image: Some(image.to_path_buf()),
            bmap: None,
            config: None,
            allow_file: true,
        }
    }
}

/// Mapped blocks equal the image; unmapped ones still hold the fill; every
/// block where the image has data matches.
fn assert_flashed(image: &[u8], card: &[u8]) -> (usize, usize) {
    let (mut mapped, mut untouched) = (0, 0);
    for (i, block) in image.chunks(4096).enumerate() {
        let on_card = &card[i * 4096..i * 4096 + block.len()];
        if block.iter().any(|&b| b != 0) {
            assert!(block == on_card, "block {i} differs");
            mapped += 1;
        } else if on_card.iter().all(|&b| b == FILL) {
            untouched += 1;
        }
    }
    assert!(
        card[image.len()..].iter().all(|&b| b == FILL),
        "written past the image's end"
    );
    (mapped, untouched)
}

#[test]
fn flashes_the_mapped_blocks_of_a_raw_image() {
    let f = fixture();
    let card = f.card(3 * MIB);
    let plan = prepare(&f.options(&card, &f.img)).unwrap();
    assert!(plan.bmap.is_some());
    assert!(
        plan.notes.iter().any(|n| n.contains("match")),
        "{:?}",
        plan.notes
    );
    let report = plan.execute(&Quiet).unwrap();
    let written = fs::read(&card).unwrap();
    let (mapped, untouched) = assert_flashed(&f.bytes, &written);
    assert_eq!(report.written, plan.mapped_bytes());
    assert_eq!(report.verified, report.written);
    assert_eq!(report.image_size, f.bytes.len() as u64);
    assert!(
        report.written < report.image_size / 3,
        "{}",
        report.summary()
    );
    assert!(mapped > 0 && untouched > 0);
    println!("{}", report.summary());
}

#[test]
fn flashes_from_xz() {
    let f = fixture();
    // The bmap of X.img is found for X.img.xz.
    let card = f.card(0);
    let plan = prepare(&f.options(&card, &f.xz)).unwrap();
    assert!(plan.compressed);
    let report = plan.execute(&Quiet).unwrap();
    assert_flashed(&f.bytes, &fs::read(&card).unwrap());
    println!("{}", report.summary());
}

#[test]
fn without_a_bmap_writes_everything() {
    let f = fixture();
    fs::remove_file(f.dir.join("bramble-arm64.img.bmap")).unwrap();
    let card = f.card(0);
    let plan = prepare(&f.options(&card, &f.xz)).unwrap();
    assert!(plan.notes.iter().any(|n| n.contains("no block map")));
    let report = plan.execute(&Quiet).unwrap();
    assert_eq!(report.written, f.bytes.len() as u64);
    assert_eq!(fs::read(&card).unwrap()[..f.bytes.len()], f.bytes[..]);
}

#[test]
fn a_corrupted_image_is_refused_before_writing_when_sha256sums_catches_it() {
    let f = fixture();
    let card = f.card(0);
    // Flip a byte inside p2's long mapped run.
    let at = (37 * MIB + 5 * MIB + 17) as usize;
    let mut bad = f.bytes.clone();
    bad[at] ^= 0xff;
    fs::write(&f.img, &bad).unwrap();
    let err = prepare(&f.options(&card, &f.img)).unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("nothing was written"), "{msg}");
    assert!(fs::read(&card).unwrap().iter().all(|&b| b == FILL));
    println!("{msg}");
}

#[test]
fn a_corrupted_range_stops_the_write_and_clears_the_partition_table() {
    let f = fixture();
    let card = f.card(0);
    let at = (37 * MIB + 5 * MIB + 17) as usize;
    let mut bad = f.bytes.clone();
    bad[at] ^= 0xff;
    fs::write(&f.img, &bad).unwrap();
    // No SHA256SUMS: only the bmap's range checksums can catch it, while writing.
    fs::remove_file(f.dir.join("SHA256SUMS")).unwrap();
    let plan = prepare(&f.options(&card, &f.img)).unwrap();
    let err = plan.execute(&Quiet).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Corrupted { .. }), "{msg}");
    assert!(msg.contains("do not match the block map"), "{msg}");
    assert!(msg.contains("partition table"), "{msg}");
    let written = fs::read(&card).unwrap();
    assert!(
        written[..512].iter().all(|&b| b == 0),
        "partition table left"
    );
    assert!(bramble_disk::mbr::read_partitions(&mut std::io::Cursor::new(&written)).is_err());
    println!("{msg}");

    // A corrupted short range is caught before any of it is written.
    let f = fixture();
    let card = f.card(0);
    let mut bad = f.bytes.clone();
    let at = (37 * MIB + 10 * MIB - 4096) as usize;
    bad[at] ^= 0xff;
    fs::write(&f.img, &bad).unwrap();
    fs::remove_file(f.dir.join("SHA256SUMS")).unwrap();
    let err = prepare(&f.options(&card, &f.img))
        .unwrap()
        .execute(&Quiet)
        .unwrap_err();
    assert!(matches!(err, Error::Corrupted { .. }), "{err}");
    let written = fs::read(&card).unwrap();
    assert!(written[at..at + 4096].iter().all(|&b| b == FILL));
}

#[test]
fn an_edited_bmap_is_refused() {
    let f = fixture();
    let card = f.card(0);
    let bmap = f.dir.join("bramble-arm64.img.bmap");
    let text = fs::read_to_string(&bmap)
        .unwrap()
        .replacen("</Range>", " </Range>", 1);
    fs::write(&bmap, text).unwrap();
    fs::remove_file(f.dir.join("SHA256SUMS")).unwrap();
    let err = prepare(&f.options(&card, &f.img)).unwrap_err().to_string();
    assert!(err.contains("own checksum"), "{err}");
}

#[test]
fn places_the_configuration_on_the_boot_partition() {
    let f = fixture();
    let card = f.card(0);
    let cfg = f.dir.join("controlplane.yaml");
    fs::write(&cfg, CONFIG).unwrap();
    let mut opts = f.options(&card, &f.xz);
    opts.config = Some(cfg);
    let report = prepare(&opts).unwrap().execute(&Quiet).unwrap();
    assert!(report.config_placed.is_some());

    // Read it back with fatfs directly on p1's bytes.
    let mut disk = File::open(&card).unwrap();
    let mut p1 = vec![0u8; (36 * MIB) as usize];
    disk.seek(SeekFrom::Start(MIB)).unwrap();
    disk.read_exact(&mut p1).unwrap();
    let fs =
        fatfs::FileSystem::new(std::io::Cursor::new(&mut p1[..]), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.volume_label().trim_end(), "BRAMBLE");
    let mut text = String::new();
    fs.root_dir()
        .open_file(bootfs::CONFIG_FILE)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, CONFIG);
    // Its Raspberry Pi lines are there for the first boot's firmware.
    let mut extra = String::new();
    fs.root_dir()
        .open_file(bootfs::EXTRA_FILE)
        .unwrap()
        .read_to_string(&mut extra)
        .unwrap();
    assert!(
        extra.lines().any(|l| l == "dtoverlay=disable-wifi"),
        "{extra}"
    );
    // The image's own files are still there.
    let mut cfg_txt = String::new();
    fs.root_dir()
        .open_file("config.txt")
        .unwrap()
        .read_to_string(&mut cfg_txt)
        .unwrap();
    assert_eq!(cfg_txt, "arm_64bit=1\n");
    drop(fs);
    // Outside p1 the card is the image wherever the image has data.
    let written = fs::read(&card).unwrap();
    let p2 = 37 * MIB as usize;
    for (i, block) in f.bytes[p2..].chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            let at = p2 + i * 4096;
            assert!(
                block == &written[at..at + block.len()],
                "block at {at} differs"
            );
        }
    }
}

#[test]
fn a_bad_configuration_writes_nothing() {
    let f = fixture();
    let card = f.card(0);
    let cfg = f.dir.join("bad.yaml");
    fs::write(&cfg, CONFIG.replace("type: controlplane", "type: toaster")).unwrap();
    let mut opts = f.options(&card, &f.img);
    opts.config = Some(cfg);
    let err = prepare(&opts).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{msg}");
    assert!(msg.contains("machine.type"), "{msg}");
    assert!(fs::read(&card).unwrap().iter().all(|&b| b == FILL));
    println!("{msg}");
}

#[test]
fn refuses_a_small_target_and_a_missing_allow_file() {
    let f = fixture();
    let small = f.dir.join("small");
    fs::write(&small, vec![FILL; 4096]).unwrap();
    let err = prepare(&f.options(&small, &f.img)).unwrap_err().to_string();
    assert!(err.contains("smaller than the image"), "{err}");
    let card = f.card(0);
    let mut opts = f.options(&card, &f.img);
    opts.allow_file = false;
    let err = prepare(&opts).unwrap_err().to_string();
    assert!(err.contains("not a block device"), "{err}");
}

/// The block device holding this machine's `/` is refused. Only the check
/// function runs (it only reads `/sys` and `/proc`): nothing here can open the
/// device for writing, even if the check were wrong.
#[test]
fn refuses_the_disk_holding_the_running_root() {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&"/")).then(|| {
            let src = l.split(" - ").nth(1)?.split(' ').nth(1)?.to_owned();
            Some((f[2].to_owned(), src))
        })?
    });
    bramble_testkit::skip_unless!(let Some((num, source)) = root, "no mount on / in mountinfo");
    let path = PathBuf::from(&source);
    let is_block = fs::metadata(&path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    bramble_testkit::skip_unless!(
        is_block,
        "/ is mounted from {source} ({num}), not a block device node here"
    );
    let err = bramble_flash::target::check(&path, 1, Path::new("/nonexistent"), false)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(
        err.contains("root filesystem") || err.contains("is a partition of"),
        "{err}"
    );
    if err.contains("is a partition of") {
        // Check the whole disk too.
        let disk = err.rsplit("flash the whole disk (").next().unwrap();
        let disk = disk.trim_end_matches(')');
        let err = bramble_flash::target::check(Path::new(disk), 1, Path::new("/x"), false)
            .unwrap_err()
            .to_string();
        println!("{err}");
        assert!(err.contains("root filesystem"), "{err}");
    }
}

/// A loop device whose file system is mounted (root only; skipped with the
/// reason otherwise): refused by `prepare`, through the mount check.
#[test]
fn refuses_a_mounted_loop_device() {
    use std::process::Command;
    bramble_testkit::skip_unless!(
        bramble_testkit::is_root(),
        "needs root for losetup and mount"
    );
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("disk");
    let f = File::create(&backing).unwrap();
    f.set_len(16 * MIB).unwrap();
    drop(f);
    let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
    bramble_testkit::skip_unless!(
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&backing)),
        "mkfs.ext4 unavailable"
    );
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&backing)
        .output();
    let loop_dev = out
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty());
    bramble_testkit::skip_unless!(
        let Some(loop_dev) = loop_dev,
        "no loop device available (losetup --find failed)"
    );
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = ok(Command::new("mount").arg(&loop_dev).arg(&mnt));
    let result = if mounted {
        let img = dir.path().join("img");
        fs::write(&img, vec![1u8; 4096]).unwrap();
        let r = prepare(&Options {
            device: PathBuf::from(&loop_dev),
            image: Some(img),
            bmap: None,
            config: None,
            allow_file: false,
        })
        .map(|_| ())
        .map_err(|e| e.to_string());
        let _ = Command::new("umount").arg(&mnt).status();
        Some(r)
    } else {
        None
    };
    let _ = Command::new("losetup").arg("-d").arg(&loop_dev).status();
    bramble_testkit::skip_unless!(let Some(result) = result, "could not mount {loop_dev}");
    let err = result.unwrap_err();
    println!("{err}");
    assert!(err.contains("is mounted on"), "{err}");
    assert!(err.contains(&loop_dev), "{err}");
}

/// The real image (`BRAMBLE_IMAGE=dist/bramble-arm64.img`): flashed from its
/// `.xz` onto a sparse file, with a configuration; every mapped block compared.
#[test]
fn flashes_the_real_image() {
    bramble_testkit::skip_unless!(
        let Some(img) = std::env::var_os("BRAMBLE_IMAGE").map(PathBuf::from),
        "BRAMBLE_IMAGE is not set (`make test` sets it to the built dist/bramble-arm64.img)"
    );
    let xz = PathBuf::from(format!("{}.xz", img.display()));
    let source = if xz.is_file() { xz } else { img.clone() };
    let dir = tempfile::tempdir_in(img.parent().unwrap()).unwrap();
    let card = dir.path().join("card");
    let size = fs::metadata(&img).unwrap().len();
    File::create(&card).unwrap().set_len(size).unwrap();
    let cfg = dir.path().join("controlplane.yaml");
    fs::write(&cfg, CONFIG).unwrap();
    let plan = prepare(&Options {
        device: card.clone(),
        image: Some(source),
        bmap: None,
        config: Some(cfg),
        allow_file: true,
    })
    .unwrap();
    assert!(plan.bmap.is_some());
    let report = plan.execute(&Quiet).unwrap();
    println!("{}", report.summary());
    // Every mapped range of the bmap matches the raw image.
    let (_, map) = plan.bmap.as_ref().unwrap();
    let (mut a, mut b) = (File::open(&img).unwrap(), File::open(&card).unwrap());
    let (p1_start, p1_end) = (MIB, 129 * MIB);
    for r in &map.ranges {
        let (start, end) = map.bytes(r);
        if start < p1_end && end > p1_start {
            continue; // The FAT changed: it now holds the configuration.
        }
        let mut x = vec![0u8; (end - start) as usize];
        let mut y = x.clone();
        a.seek(SeekFrom::Start(start)).unwrap();
        a.read_exact(&mut x).unwrap();
        b.seek(SeekFrom::Start(start)).unwrap();
        b.read_exact(&mut y).unwrap();
        assert!(x == y, "blocks {}-{} differ", r.first, r.last);
    }
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&card)
        .unwrap();
    assert_eq!(
        bootfs::read(&mut disk).unwrap().as_deref(),
        Some(CONFIG.as_bytes())
    );
}

//! `nodectl image flash`: writes a Bramble image onto an SD card.
//!
//! [`prepare`] does every check and writes nothing: the machine configuration
//! (`--config`, validated by `bramble-config` exactly as `nodectl validate`
//! does), the block map (its own checksum), `SHA256SUMS` next to the image (the
//! image and the bmap are hashed in full before anything is written), and the
//! target ([`target::check`]: not mounted, not the running system's root or
//! swap, a whole block device unless a file is allowed, big enough).
//!
//! [`Plan::execute`] re-checks the target, opens it (`O_EXCL` for a block
//! device: the kernel refuses if something mounted it meanwhile) and writes
//! only the bmap's mapped ranges (everything, without a bmap), decompressing
//! `.xz` as it streams. Each range's sha256 is checked as it is read: a range
//! up to [`CHUNK`] bytes is checked before any of it is written; a longer
//! one at its end. Then `fsync`, `posix_fadvise(DONTNEED)` to drop the
//! target's clean pages from the page cache, and every written range is read
//! back and hashed again. Last, the configuration goes onto the FAT boot
//! partition as [`bootfs::CONFIG_FILE`], and is read back; its
//! `machine.pi.configTxt` lines go into [`bootfs::EXTRA_FILE`], so the first
//! boot's firmware already reads them.
//!
//! If the image turns out corrupted after writing began, the first 512 bytes
//! (the partition table) are cleared so the card cannot be booted or taken
//! for a Bramble disk, and the error says so.

pub mod bmap;
pub mod bootfs;
pub mod error;
pub mod target;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use crate::bmap::Bmap;
pub use crate::error::{Error, Result};
pub use crate::target::Target;

/// The image `make image` writes.
pub const DEFAULT_IMAGE: &str = "dist/bramble-arm64.img";
/// The checksum list the image builder writes next to the image.
pub const SUMS: &str = "SHA256SUMS";
/// Largest piece read, hashed and written at once; a mapped range no longer
/// than this is verified before any of it is written.
pub const CHUNK: usize = 8 << 20;
/// Block size used for messages when there is no bmap.
const RAW_BLOCK: u64 = 4096;

/// What to flash where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The disk (or, with `allow_file`, a regular file standing in for it).
    pub device: PathBuf,
    /// The raw image or its `.xz`; `None`: [`DEFAULT_IMAGE`], else its `.xz`.
    pub image: Option<PathBuf>,
    /// The block map; `None`: `<image>.bmap` (for `X.img.xz` also `X.img.bmap`).
    pub bmap: Option<PathBuf>,
    /// A machine configuration to place on the boot partition.
    pub config: Option<PathBuf>,
    /// Let a regular file stand in for the device.
    pub allow_file: bool,
}

/// Everything checked; ready to write.
#[derive(Debug)]
pub struct Plan {
    /// The target.
    pub target: Target,
    /// The image file.
    pub image: PathBuf,
    /// Whether it is xz-compressed.
    pub compressed: bool,
    /// The block map and its file, if any.
    pub bmap: Option<(PathBuf, Bmap)>,
    /// Size of the raw image.
    pub image_size: u64,
    /// What will be written, in order.
    pieces: Vec<Piece>,
    /// The configuration file and its bytes.
    pub config: Option<(PathBuf, Vec<u8>)>,
    /// What the checks found worth telling (no bmap, no SHA256SUMS, ...).
    pub notes: Vec<String>,
    allow_file: bool,
}

/// A byte range of the image to write, with the sha256 it must have.
#[derive(Debug, Clone)]
struct Piece {
    start: u64,
    end: u64,
    /// From the bmap or SHA256SUMS; `None`: computed while writing, and the
    /// read-back is compared with that.
    sha256: Option<[u8; 32]>,
    block_size: u64,
}

impl Piece {
    fn blocks(&self) -> (u64, u64) {
        (
            self.start / self.block_size,
            (self.end.max(self.start + 1) - 1) / self.block_size,
        )
    }
}

/// What was done.
#[derive(Debug, Clone)]
pub struct Report {
    /// Bytes written to the target (the mapped data).
    pub written: u64,
    /// Size of the raw image.
    pub image_size: u64,
    /// Whether a bmap guided the writing.
    pub with_bmap: bool,
    /// Bytes read back and verified.
    pub verified: u64,
    /// Where the configuration was placed, if it was.
    pub config_placed: Option<String>,
}

/// Receives progress; [`Bar`] draws it with indicatif.
pub trait Progress {
    /// A new phase with `total` bytes.
    fn phase(&self, name: &str, total: u64);
    /// `n` more bytes done.
    fn advance(&self, n: u64);
    /// The phase is over.
    fn done(&self);
}

/// No progress output.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn done(&self) {}
}

/// An indicatif progress bar on stderr (drawn only on a terminal).
#[derive(Debug, Default)]
pub struct Bar {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        let bar = indicatif::ProgressBar::new(total);
        let style = indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(name.to_owned());
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(slot) = self.bar.lock()
            && let Some(bar) = slot.as_ref()
        {
            bar.inc(n);
        }
    }
    fn done(&self) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish();
        }
    }
}

fn is_xz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "xz")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The image to use: the one given, else [`DEFAULT_IMAGE`], else its `.xz`.
fn resolve_image(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return match fs::metadata(p) {
            Ok(m) if m.is_file() => Ok(p.to_path_buf()),
            Ok(_) => Err(Error::Image {
                path: p.to_path_buf(),
                reason: "not a regular file".into(),
            }),
            Err(e) => Err(Error::Image {
                path: p.to_path_buf(),
                reason: e.to_string(),
            }),
        };
    }
    let raw = PathBuf::from(DEFAULT_IMAGE);
    let xz = with_suffix(&raw, ".xz");
    for p in [&raw, &xz] {
        if p.is_file() {
            return Ok(p.clone());
        }
    }
    Err(Error::Image {
        path: raw,
        reason: "not found (nor its .xz): build it with `make image` or pass --image".into(),
    })
}

fn find_bmap(image: &Path) -> Option<PathBuf> {
    let mut candidates = vec![with_suffix(image, ".bmap")];
    if is_xz(image) {
        candidates.push(image.with_extension("bmap"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The sha256 a `SHA256SUMS` text gives for `name`.
pub fn sums_entry(sums: &str, name: &str) -> Option<[u8; 32]> {
    sums.lines().find_map(|line| {
        let (sum, file) = line.split_once(char::is_whitespace)?;
        let file = file.trim_start();
        let file = file.strip_prefix('*').unwrap_or(file);
        (file == name).then(|| bmap::parse_hex32(sum)).flatten()
    })
}

fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let mut f = File::open(path).map_err(Error::io(path, "cannot open"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(Error::io(path, "cannot read"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks `file` against its line in `sums` (if it has one): true if checked.
fn check_sum(sums_path: &Path, sums: &str, file: &Path) -> Result<bool> {
    let Some(expected) = sums_entry(sums, &file_name(file)) else {
        return Ok(false);
    };
    let actual = sha256_file(file)?;
    if actual != expected {
        return Err(Error::Checksum {
            path: file.to_path_buf(),
            sums: sums_path.to_path_buf(),
            expected: bmap::hex(&expected),
            actual: bmap::hex(&actual),
        });
    }
    Ok(true)
}

/// Reads the machine configuration and validates it as `nodectl validate` does.
pub fn load_config(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::Config {
        path: path.to_path_buf(),
        reason: "not UTF-8 text".into(),
    })?;
    bramble_config::MachineConfig::parse(text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(bytes)
}

/// The image as a stream of its raw bytes.
enum Source {
    Raw(File),
    Xz(Box<liblzma::read::XzDecoder<BufReader<File>>>),
}

impl Source {
    fn open(path: &Path, compressed: bool) -> Result<Source> {
        let f = File::open(path).map_err(Error::io(path, "cannot open the image"))?;
        Ok(if compressed {
            Source::Xz(Box::new(liblzma::read::XzDecoder::new_multi_decoder(
                BufReader::with_capacity(1 << 20, f),
            )))
        } else {
            Source::Raw(f)
        })
    }

    fn reader(&mut self) -> &mut dyn Read {
        match self {
            Source::Raw(f) => f,
            Source::Xz(x) => x.as_mut(),
        }
    }
}

/// Reads the image in order, skipping to each piece.
struct ImageReader {
    source: Source,
    pos: u64,
    path: PathBuf,
}

impl ImageReader {
    fn err(&self, e: io::Error) -> Error {
        Error::Image {
            path: self.path.clone(),
            reason: if e.kind() == io::ErrorKind::UnexpectedEof {
                format!(
                    "it ends near byte {}, before the end its block map describes (truncated?)",
                    self.pos
                )
            } else {
                format!("reading near byte {}: {e}", self.pos)
            },
        }
    }

    fn skip_to(&mut self, offset: u64) -> Result<()> {
        if offset < self.pos {
            return Err(Error::Image {
                path: self.path.clone(),
                reason: "internal: pieces out of order".into(),
            });
        }
        let gap = offset - self.pos;
        let result = match &mut self.source {
            Source::Raw(f) => f.seek(SeekFrom::Start(offset)).map(|_| ()),
            Source::Xz(x) => io::copy(&mut x.as_mut().take(gap), &mut io::sink()).and_then(|n| {
                if n == gap {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                }
            }),
        };
        result.map_err(|e| self.err(e))?;
        self.pos = offset;
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let r = self.source.reader().read_exact(buf);
        r.map_err(|e| self.err(e))?;
        self.pos += buf.len() as u64;
        Ok(())
    }
}

/// Checks everything and writes nothing. See the crate documentation.
pub fn prepare(opts: &Options) -> Result<Plan> {
    let mut notes = Vec::new();
    let config = match &opts.config {
        Some(path) => Some((path.clone(), load_config(path)?)),
        None => None,
    };
    let image = resolve_image(opts.image.as_deref())?;
    let compressed = is_xz(&image);

    let bmap_path = match &opts.bmap {
        Some(p) => Some(p.clone()),
        None => find_bmap(&image),
    };
    let bmap = match bmap_path {
        Some(path) => {
            let text = fs::read_to_string(&path).map_err(|e| Error::Bmap {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let map = bmap::parse(&text).map_err(|reason| Error::Bmap {
                path: path.clone(),
                reason,
            })?;
            Some((path, map))
        }
        None => {
            notes.push(format!(
                "no block map ({}.bmap): writing the whole image",
                image.display()
            ));
            None
        }
    };

    // SHA256SUMS next to the image: the image and the bmap, hashed in full now.
    let sums_path = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(SUMS);
    let sums = fs::read_to_string(&sums_path).ok();
    let mut raw_sha256 = None;
    match &sums {
        Some(text) => {
            let mut checked = Vec::new();
            if check_sum(&sums_path, text, &image)? {
                checked.push(file_name(&image));
            }
            if let Some((path, _)) = &bmap
                && path.parent() == image.parent()
                && check_sum(&sums_path, text, path)?
            {
                checked.push(file_name(path));
            }
            let raw_name = if compressed {
                file_name(&image.with_extension(""))
            } else {
                file_name(&image)
            };
            raw_sha256 = sums_entry(text, &raw_name);
            if checked.is_empty() {
                notes.push(format!(
                    "{} does not list {}: only the block map's checksums are checked",
                    sums_path.display(),
                    file_name(&image)
                ));
            } else {
                notes.push(format!(
                    "{} {} {}",
                    checked.join(" and "),
                    if checked.len() > 1 {
                        "match"
                    } else {
                        "matches"
                    },
                    sums_path.display()
                ));
            }
        }
        None => notes.push(format!(
            "no {} next to the image: only the block map's checksums are checked",
            sums_path.display()
        )),
    }

    let (image_size, pieces) = match &bmap {
        Some((_, map)) => {
            let pieces = map
                .ranges
                .iter()
                .map(|r| {
                    let (start, end) = map.bytes(r);
                    Piece {
                        start,
                        end,
                        sha256: Some(r.sha256),
                        block_size: map.block_size,
                    }
                })
                .collect();
            if !compressed {
                let len = fs::metadata(&image)
                    .map_err(Error::io(&image, "cannot stat"))?
                    .len();
                if len != map.image_size {
                    return Err(Error::Bmap {
                        path: opts.bmap.clone().unwrap_or_else(|| image.clone()),
                        reason: format!(
                            "it describes an image of {} bytes but {} has {len}: not this image's block map",
                            map.image_size,
                            image.display()
                        ),
                    });
                }
            }
            (map.image_size, pieces)
        }
        None => {
            let size = if compressed {
                notes.push("decompressing once to learn the image's size".into());
                let mut src = Source::open(&image, true)?;
                io::copy(src.reader(), &mut io::sink()).map_err(|e| Error::Image {
                    path: image.clone(),
                    reason: format!("not a valid xz file: {e}"),
                })?
            } else {
                fs::metadata(&image)
                    .map_err(Error::io(&image, "cannot stat"))?
                    .len()
            };
            (
                size,
                vec![Piece {
                    start: 0,
                    end: size,
                    sha256: raw_sha256,
                    block_size: RAW_BLOCK,
                }],
            )
        }
    };

    let target = target::check(&opts.device, image_size, &image, opts.allow_file)?;
    Ok(Plan {
        target,
        image,
        compressed,
        bmap,
        image_size,
        pieces,
        config,
        notes,
        allow_file: opts.allow_file,
    })
}

impl Plan {
    /// Bytes that will be written.
    pub fn mapped_bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.end - p.start).sum()
    }

    /// Writes, verifies and places the configuration. See the crate docs.
    pub fn execute(&self, progress: &dyn Progress) -> Result<Report> {
        let path = &self.target.path;
        // Re-check right before opening: something may have mounted it since.
        target::check(path, self.image_size, &self.image, self.allow_file)?;
        let mut open = OpenOptions::new();
        open.read(true).write(true);
        if self.target.block_device {
            // On a block device, O_EXCL without O_CREAT fails with EBUSY
            // while the kernel has it in use (mounted, swap, held).
            open.custom_flags(nix::fcntl::OFlag::O_EXCL.bits());
        }
        let mut out = open.open(path).map_err(Error::io(
            path,
            "cannot open for writing (nothing was written)",
        ))?;

        let mut reader = ImageReader {
            source: Source::open(&self.image, self.compressed)?,
            pos: 0,
            path: self.image.clone(),
        };
        let total = self.mapped_bytes();
        progress.phase("writing", total);
        let mut written = 0u64;
        let mut computed: Vec<[u8; 32]> = Vec::with_capacity(self.pieces.len());
        let mut buf = vec![0u8; CHUNK];
        for piece in &self.pieces {
            let result = self.write_piece(piece, &mut reader, &mut out, &mut buf, |n| {
                written += n;
                progress.advance(n);
            });
            match result {
                Ok(sum) => computed.push(sum),
                Err(e) => {
                    progress.done();
                    return Err(self.after_failure(e, &mut out, written));
                }
            }
        }
        progress.done();
        out.sync_all()
            .map_err(|e| self.after_failure(Error::io(path, "fsync")(e), &mut out, written))?;

        // Read back what was written, from the device rather than the page
        // cache where the kernel lets go of it.
        let _ = nix::fcntl::posix_fadvise(
            &out,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        progress.phase("verifying", total);
        let mut verified = 0u64;
        for (piece, expected) in self.pieces.iter().zip(&computed) {
            let got = hash_range(&mut out, piece.start, piece.end, &mut buf, |n| {
                verified += n;
                progress.advance(n);
            })
            .map_err(|e| Error::Io {
                path: path.clone(),
                what: "reading back",
                source: e,
                left: " The image was written completely but could not be verified.".into(),
            })?;
            if got != *expected {
                progress.done();
                let (first, last) = piece.blocks();
                return Err(Error::Verify {
                    path: path.clone(),
                    first,
                    last,
                    left: "The whole image was written but does not read back intact: do not use this card.".into(),
                });
            }
        }
        progress.done();

        let config_placed = match &self.config {
            Some((cfg_path, data)) => {
                let placed = (|| {
                    bootfs::place(&mut out, data)?;
                    bootfs::place_pi_lines(&mut out, data)?;
                    out.sync_all().map_err(|e| format!("fsync: {e}"))?;
                    match bootfs::read(&mut out)? {
                        Some(back) if back == *data => Ok(()),
                        Some(_) => Err("the file reads back different".to_owned()),
                        None => Err("the file is not there after writing it".to_owned()),
                    }
                })();
                placed.map_err(|reason| Error::BootPartition {
                    path: path.clone(),
                    reason: format!(
                        "{reason}. The image itself was written and verified; {} is not on the card \
                         (apply it with `nodectl apply-config` after the first boot instead)",
                        cfg_path.display()
                    ),
                })?;
                Some(format!(
                    "{} placed as {} on the boot partition (applied at first boot)",
                    cfg_path.display(),
                    bootfs::CONFIG_FILE
                ))
            }
            None => None,
        };
        Ok(Report {
            written,
            image_size: self.image_size,
            with_bmap: self.bmap.is_some(),
            verified,
            config_placed,
        })
    }

    /// Reads one piece, checks it and writes it; returns its sha256.
    fn write_piece(
        &self,
        piece: &Piece,
        reader: &mut ImageReader,
        out: &mut File,
        buf: &mut [u8],
        mut done: impl FnMut(u64),
    ) -> Result<[u8; 32]> {
        reader.skip_to(piece.start)?;
        let corrupted = |left: String| {
            let (first, last) = piece.blocks();
            Error::Corrupted {
                path: self.image.clone(),
                first,
                last,
                left,
            }
        };
        let io_err = |e| Error::Io {
            path: self.target.path.clone(),
            what: "writing",
            source: e,
            left: String::new(),
        };
        out.seek(SeekFrom::Start(piece.start)).map_err(io_err)?;
        let len = piece.end - piece.start;
        let mut hasher = Sha256::new();
        if len <= buf.len() as u64 {
            // Small enough to check before writing any of it.
            let chunk = &mut buf[..len as usize];
            reader.read_exact(chunk)?;
            hasher.update(&*chunk);
            let sum: [u8; 32] = hasher.finalize().into();
            if piece.sha256.is_some_and(|s| s != sum) {
                return Err(corrupted(String::new()));
            }
            out.write_all(chunk).map_err(io_err)?;
            done(len);
            return Ok(sum);
        }
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            reader.read_exact(&mut buf[..n])?;
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err)?;
            done(n as u64);
            left -= n as u64;
        }
        let sum: [u8; 32] = hasher.finalize().into();
        if piece.sha256.is_some_and(|s| s != sum) {
            return Err(corrupted(String::new()));
        }
        Ok(sum)
    }

    /// After writing began and failed: clear the partition table so the card
    /// is not mistaken for a good Bramble disk, and say what is left.
    fn after_failure(&self, err: Error, out: &mut File, written: u64) -> Error {
        let left = if written == 0 {
            "Nothing was written to the target.".to_owned()
        } else {
            let cleared = out
                .seek(SeekFrom::Start(0))
                .and_then(|_| out.write_all(&[0u8; 512]))
                .and_then(|()| out.sync_all());
            match cleared {
                Ok(()) => format!(
                    "{written} bytes of the image had been written to {}; its first 512 bytes \
                     (the partition table) were then cleared, so it will not boot nor pass for \
                     a Bramble disk. Flash it again with a good image.",
                    self.target.path.display()
                ),
                Err(e) => format!(
                    "{written} bytes of the image had been written to {} and clearing its \
                     partition table failed too ({e}): it holds a partial image; do not boot \
                     it, flash it again.",
                    self.target.path.display()
                ),
            }
        };
        match err {
            Error::Corrupted {
                path, first, last, ..
            } => Error::Corrupted {
                path,
                first,
                last,
                left,
            },
            Error::Io {
                path, what, source, ..
            } => Error::Io {
                path,
                what,
                source,
                left: format!(". {left}"),
            },
            Error::Image { path, reason } => Error::Image {
                path,
                reason: format!("{reason}. {left}"),
            },
            other => other,
        }
    }
}

fn hash_range(
    f: &mut File,
    start: u64,
    end: u64,
    buf: &mut [u8],
    mut done: impl FnMut(u64),
) -> io::Result<[u8; 32]> {
    f.seek(SeekFrom::Start(start))?;
    let mut h = Sha256::new();
    let mut left = end - start;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        done(n as u64);
        left -= n as u64;
    }
    Ok(h.finalize().into())
}

impl Report {
    /// The closing line: bytes written against the image's size.
    pub fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        let pct = if self.image_size == 0 {
            0.0
        } else {
            self.written as f64 * 100.0 / self.image_size as f64
        };
        format!(
            "wrote {} bytes ({:.1} MiB) of a {} byte ({:.1} MiB) image: {pct:.1}%{}; read back and verified {} bytes",
            self.written,
            mib(self.written),
            self.image_size,
            mib(self.image_size),
            if self.with_bmap {
                ", only the mapped blocks"
            } else {
                ", everything (no bmap)"
            },
            self.verified
        )
    }
}

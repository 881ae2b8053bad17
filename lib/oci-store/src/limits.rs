//! The store's bounds on what a registry or an archive may make it read,
//! hold in memory or write: a hostile source is cut off at them, with an
//! error naming the document or layer and the bound.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::manifest::MAX_DOCUMENT;

/// Bounds on the input a pull or an import may feed the store. The
/// defaults suit a node: real images stay far below them, a gzip bomb or
/// an endless manifest does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest manifest or index read from a registry, in bytes; refused
    /// as it streams (by its `Content-Length` first, then by counting).
    /// Capped at 8 MiB, the most the store reads into memory.
    pub manifest_bytes: u64,
    /// Most uncompressed bytes one image's layers may unpack to (the tar
    /// streams of the layers unpacked for it), and the most its layer
    /// blobs may declare compressed.
    pub image_bytes: u64,
    /// Most entries one layer may hold (and one import archive).
    pub layer_entries: u64,
    /// Most bytes an import archive may hold once decompressed.
    pub archive_bytes: u64,
}

impl Limits {
    /// 4 MiB, as containerd allows.
    pub const DEFAULT_MANIFEST_BYTES: u64 = 4 << 20;
    /// 4 GiB.
    pub const DEFAULT_IMAGE_BYTES: u64 = 4 << 30;
    /// 500 000: distribution images hold tens of thousands.
    pub const DEFAULT_LAYER_ENTRIES: u64 = 500_000;
    /// 4 GiB (what runtimed accepts of an archive compressed).
    pub const DEFAULT_ARCHIVE_BYTES: u64 = 4 << 30;

    /// The manifest bound actually applied (at most what the store reads
    /// into memory).
    pub(crate) fn manifest_bound(&self) -> u64 {
        self.manifest_bytes.min(MAX_DOCUMENT)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            manifest_bytes: Self::DEFAULT_MANIFEST_BYTES,
            image_bytes: Self::DEFAULT_IMAGE_BYTES,
            layer_entries: Self::DEFAULT_LAYER_ENTRIES,
            archive_bytes: Self::DEFAULT_ARCHIVE_BYTES,
        }
    }
}

/// A reader that fails once more than `remaining` bytes come through,
/// recording that it did in a flag the caller keeps (the error itself
/// reaches the caller wrapped by `tar` or `flate2`).
#[derive(Debug)]
pub(crate) struct BoundedReader<R> {
    inner: R,
    remaining: u64,
    read: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R> BoundedReader<R> {
    /// Wraps `inner`, allowing `limit` bytes; `exceeded` is set when more come.
    pub(crate) fn new(inner: R, limit: u64, exceeded: Rc<Cell<bool>>) -> Self {
        Self {
            inner,
            remaining: limit,
            read: 0,
            exceeded,
        }
    }
}

impl<R: Read> Read for BoundedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded.get() {
            return Err(io::Error::other("over the store's bound"));
        }
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            self.exceeded.set(true);
            return Err(io::Error::other(format!(
                "over the store's bound after {} bytes",
                self.read + self.remaining
            )));
        }
        self.remaining -= n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reader_stops_past_its_limit() {
        let flag = Rc::new(Cell::new(false));
        let mut r = BoundedReader::new(&[0u8; 10][..], 10, Rc::clone(&flag));
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("exactly the limit");
        assert_eq!(out.len(), 10);
        assert!(!flag.get());

        let mut r = BoundedReader::new(&[0u8; 11][..], 10, Rc::clone(&flag));
        let err = r.read_to_end(&mut Vec::new()).expect_err("past the limit");
        assert!(err.to_string().contains("bound"), "{err}");
        assert!(flag.get());
    }

    #[test]
    fn manifest_bound_is_capped() {
        let l = Limits {
            manifest_bytes: 1 << 40,
            ..Limits::default()
        };
        assert_eq!(l.manifest_bound(), MAX_DOCUMENT);
        assert_eq!(Limits::default().manifest_bound(), 4 << 20);
    }
}

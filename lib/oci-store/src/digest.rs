//! sha256 digests: validation, hashing readers, chain IDs.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

use sha2::{Digest as _, Sha256};

use crate::Error;

/// The prefix of every digest the store handles.
pub(crate) const SHA256: &str = "sha256:";

/// Checks `digest` is `sha256:<64 lowercase hex>` and returns the hex part.
pub(crate) fn hex_of(digest: &str) -> Result<&str, Error> {
    match digest.strip_prefix(SHA256) {
        Some(hex) if is_hex64(hex) => Ok(hex),
        _ => Err(Error::InvalidDigest {
            digest: digest.to_owned(),
        }),
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("{SHA256}{}", hex::encode(Sha256::digest(bytes)))
}

/// Formats a finished hasher as `sha256:<hex>`.
pub(crate) fn finish(hasher: Sha256) -> String {
    format!("{SHA256}{}", hex::encode(hasher.finalize()))
}

/// The OCI chain IDs of a layer stack, bottom first: the first is the first
/// diff ID, then `sha256(previous chain ID + " " + diff ID)`.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_of(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// A running hash and byte count, shared between a [`TallyReader`] and the
/// code that reads the result after the reader has been consumed.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    hasher: Sha256,
    bytes: u64,
}

impl Tally {
    /// A fresh tally behind a shared handle.
    pub(crate) fn shared() -> Rc<RefCell<Tally>> {
        Rc::new(RefCell::new(Tally::default()))
    }

    /// The digest and byte count so far (the tally is reset).
    pub(crate) fn take(cell: &RefCell<Tally>) -> (String, u64) {
        let tally = std::mem::take(&mut *cell.borrow_mut());
        (finish(tally.hasher), tally.bytes)
    }
}

/// A reader that hashes and counts everything read through it.
#[derive(Debug)]
pub(crate) struct TallyReader<R> {
    inner: R,
    tally: Rc<RefCell<Tally>>,
}

impl<R> TallyReader<R> {
    /// Wraps `inner`, recording into `tally`.
    pub(crate) fn new(inner: R, tally: Rc<RefCell<Tally>>) -> Self {
        Self { inner, tally }
    }
}

impl<R: Read> Read for TallyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut tally = self.tally.borrow_mut();
        tally.hasher.update(&buf[..n]);
        tally.bytes += n as u64;
        Ok(n)
    }
}

/// A reader that hashes what passes through it, owning its state (for
/// single-threaded and `Send` use).
#[derive(Debug)]
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> HashingReader<R> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The digest and byte count of what was read.
    pub(crate) fn finish(self) -> (String, u64) {
        (finish(self.hasher), self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_digests() {
        let good = sha256_of(b"hello");
        assert_eq!(
            good,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(hex_of(&good).is_ok());
        for bad in [
            "sha256:abc",
            "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "",
        ] {
            let err = hex_of(bad).expect_err("bad digest accepted");
            assert!(err.to_string().contains("invalid digest"), "{err}");
        }
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = sha256_of(b"a");
        let b = sha256_of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn readers_hash_what_they_read() {
        let tally = Tally::shared();
        let mut r = TallyReader::new(&b"hello"[..], Rc::clone(&tally));
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("read");
        assert_eq!(Tally::take(&tally), (sha256_of(b"hello"), 5));

        let mut h = HashingReader::new(&b"hello"[..]);
        io::copy(&mut h, &mut io::sink()).expect("copy");
        assert_eq!(h.finish(), (sha256_of(b"hello"), 5));
    }
}

//! Carrying kernel RNG state across boots.
//!
//! A Pi has little entropy early in boot. A seed saved on the state partition
//! at the previous boot is mixed into the kernel pool as soon as the state
//! partition is mounted (writing to /dev/urandom mixes without crediting
//! entropy), and replaced with fresh output once the node is ready, so that
//! writing it (two fsyncs on an SD card) does not delay the services. A power
//! cut in between mixes the same seed once more at the next boot; it was
//! never credited, so that costs nothing but the seed's novelty.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

const SEED_BYTES: usize = 512;

/// Mixes the saved seed, if any, into the kernel's pool.
pub fn mix_seed(seed_file: &Path) {
    if let Ok(seed) = fs::read(seed_file)
        && !seed.is_empty()
        && let Ok(mut urandom) = OpenOptions::new().write(true).open("/dev/urandom")
        && let Err(err) = urandom.write_all(&seed)
    {
        tracing::warn!("mixing {} into the RNG: {err}", seed_file.display());
    }
}

/// Replaces the saved seed with fresh output of the kernel's RNG (atomically).
pub fn renew_seed(seed_file: &Path) {
    let mut fresh = [0u8; SEED_BYTES];
    let filled = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut fresh));
    match filled.and_then(|()| Ok(bramble_atomic::write(seed_file, &fresh, 0o600)?)) {
        Ok(()) => {}
        Err(err) => tracing::warn!("saving a new RNG seed to {}: {err}", seed_file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewing_replaces_the_seed_with_fresh_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("random-seed");
        // Nothing saved yet (first boot): mixing is a no-op.
        mix_seed(&seed);
        assert!(!seed.exists());
        renew_seed(&seed);
        let first = fs::read(&seed).unwrap();
        assert_eq!(first.len(), SEED_BYTES);
        mix_seed(&seed);
        renew_seed(&seed);
        let second = fs::read(&seed).unwrap();
        assert_eq!(second.len(), SEED_BYTES);
        assert_ne!(first, second, "a seed is never saved twice");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&seed).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

//! Carrying kernel RNG state across boots.
//!
//! A Pi has little entropy early in boot. A seed saved on the state partition
//! at the previous boot is mixed into the kernel pool (writing to
//! /dev/urandom mixes without crediting entropy), then replaced at once with
//! fresh output so the same seed is never used twice.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

const SEED_BYTES: usize = 512;

pub fn carry_seed(seed_file: &Path) {
    if let Ok(seed) = fs::read(seed_file)
        && !seed.is_empty()
        && let Ok(mut urandom) = OpenOptions::new().write(true).open("/dev/urandom")
        && let Err(err) = urandom.write_all(&seed)
    {
        tracing::warn!("mixing {} into the RNG: {err}", seed_file.display());
    }
    let mut fresh = [0u8; SEED_BYTES];
    let filled = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut fresh));
    match filled.and_then(|()| crate::atomic::write(seed_file, &fresh, 0o600)) {
        Ok(()) => {}
        Err(err) => tracing::warn!("saving a new RNG seed to {}: {err}", seed_file.display()),
    }
}

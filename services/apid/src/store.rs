//! The node's machine configuration on persistent state.
//!
//! ```text
//! <dir>/config.yaml          the configuration in force (absent: maintenance mode)
//! <dir>/config.previous.yaml the one it replaced, kept for rollback
//! <dir>/config.staged.yaml   applied with `--mode staged`: promoted at the next start
//! <dir>/config.trying        present while a `--mode try` configuration is on trial
//! ```
//!
//! A trial that neither timed out nor was replaced before the server stopped
//! (a reboot, a power cut) ends at the next start: the previous
//! configuration returns.
//!
//! Every file is replaced atomically (temporary file, fsync, rename, fsync of
//! the directory), and the order of the steps is chosen so that a power cut at
//! any point leaves `config.yaml` holding either the old or the new document,
//! never a mix and never nothing once there was something.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use bramble_config::MachineConfig;

use crate::error::Error;

/// File name of the configuration in force.
pub const CURRENT: &str = "config.yaml";
/// File name of the configuration it replaced.
pub const PREVIOUS: &str = "config.previous.yaml";
/// File name of a configuration waiting for the next start.
pub const STAGED: &str = "config.staged.yaml";
/// Marks the configuration in force as on trial.
pub const TRYING: &str = "config.trying";
/// A configuration placed on the boot partition by `nodectl image flash
/// --config`, copied here byte for byte by PID 1 at boot (`init/src/stage1.rs`).
pub const FROM_BOOT: &str = "config.from-boot.yaml";

/// The configuration holds secrets (CA keys, tokens): owner only.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// The configuration files in one directory.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    dir: PathBuf,
}

/// A configuration read from the store: the document as stored and parsed.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The YAML document exactly as applied.
    pub raw: String,
    /// Its parsed, validated form.
    pub config: MachineConfig,
}

impl ConfigStore {
    /// A store in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Promotes a staged configuration, if there is one, to the one in force.
    /// Called once at start, before [`ConfigStore::load`]. A staged document
    /// that no longer parses is set aside (renamed `.rejected`) and reported.
    pub fn promote_staged(&self) -> Result<bool, Error> {
        let staged = self.path(STAGED);
        let raw = match fs::read_to_string(&staged) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(Error::Persist {
                    path: staged,
                    source,
                });
            }
        };
        if let Err(e) = MachineConfig::parse(&raw) {
            tracing::error!(error = %e, "the staged configuration is invalid; keeping the current one");
            let rejected = self.path("config.staged.rejected.yaml");
            fs::rename(&staged, &rejected).map_err(|source| Error::Persist {
                path: rejected,
                source,
            })?;
            return Ok(false);
        }
        self.store(&raw, false)?;
        fs::remove_file(&staged).map_err(|source| Error::Persist {
            path: staged.clone(),
            source,
        })?;
        bramble_atomic::sync_dir(&self.dir)
            .map_err(io::Error::from)
            .map_err(|source| Error::Persist {
                path: staged,
                source,
            })?;
        Ok(true)
    }

    /// Adopts a configuration placed on the card at flash time ([`FROM_BOOT`]),
    /// in maintenance mode only: validated and stored exactly as a first
    /// `ApplyConfiguration` stores it. Called once at start, before
    /// [`ConfigStore::load`]. An invalid one is reported with its errors and
    /// kept aside as `config.from-boot.rejected.yaml` (the node stays in
    /// maintenance mode); one that arrives while a configuration is in force
    /// is kept aside as `config.from-boot.ignored.yaml`. True if it is now in
    /// force.
    pub fn adopt_from_boot(&self) -> Result<bool, Error> {
        let path = self.path(FROM_BOOT);
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(Error::Persist { path, source }),
        };
        let set_aside = |what: &str| -> Result<bool, Error> {
            let to = self.path(&format!("config.from-boot.{what}.yaml"));
            fs::rename(&path, &to)
                .and_then(|()| bramble_atomic::sync_dir(&self.dir).map_err(io::Error::from))
                .map_err(|source| Error::Persist { path: to, source })?;
            Ok(false)
        };
        if self.path(CURRENT).exists() {
            tracing::warn!(
                "the configuration placed on the boot partition is ignored: this node is already configured (kept as config.from-boot.ignored.yaml)"
            );
            return set_aside("ignored");
        }
        let checked = String::from_utf8(raw)
            .map_err(|_| "the file is not UTF-8 text".to_owned())
            .and_then(|raw| match MachineConfig::parse(&raw) {
                Ok(_) => Ok(raw),
                Err(e) => Err(e.to_string()),
            });
        match checked {
            Ok(raw) => {
                self.store(&raw, false)?;
                fs::remove_file(&path)
                    .and_then(|()| bramble_atomic::sync_dir(&self.dir).map_err(io::Error::from))
                    .map_err(|source| Error::Persist { path, source })?;
                Ok(true)
            }
            Err(reason) => {
                tracing::error!(
                    "the configuration placed on the boot partition is invalid and was not applied; \
                     the node stays in maintenance mode (kept as config.from-boot.rejected.yaml):\n{reason}"
                );
                set_aside("rejected")
            }
        }
    }

    /// Whether the configuration in force is on trial.
    pub fn trial_in_progress(&self) -> bool {
        self.path(TRYING).exists()
    }

    /// Ends a trial the server did not see to its end: the previous
    /// configuration returns. Called once at start, before
    /// [`ConfigStore::load`].
    pub fn end_unfinished_trial(&self) -> Result<bool, Error> {
        if !self.path(TRYING).exists() {
            return Ok(false);
        }
        if let Some(previous) = self.previous()? {
            self.write(CURRENT, &previous)?;
        }
        self.set_trial(false)?;
        Ok(true)
    }

    fn set_trial(&self, on: bool) -> Result<(), Error> {
        let path = self.path(TRYING);
        if on {
            self.ensure_dir()?;
            return self.write(TRYING, "");
        }
        match fs::remove_file(&path) {
            Ok(()) => bramble_atomic::sync_dir(&self.dir)
                .map_err(io::Error::from)
                .map_err(|source| Error::Persist { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Persist { path, source }),
        }
    }

    /// The document in force as stored, whether or not it parses.
    pub fn current_raw(&self) -> Result<Option<String>, Error> {
        let path = self.path(CURRENT);
        match fs::read_to_string(&path) {
            Ok(raw) => Ok(Some(raw)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Persist { path, source }),
        }
    }

    /// The configuration in force; `None` in maintenance mode.
    ///
    /// A stored document that does not parse (it was valid when written, so
    /// only a newer schema or a damaged disk can cause this) is an error that
    /// names the file: the server then admits only the cluster's admins
    /// (`crate::server`, recovery mode).
    pub fn load(&self) -> Result<Option<Stored>, Error> {
        let path = self.path(CURRENT);
        let raw = match fs::read_to_string(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Persist { path, source }),
        };
        let config = MachineConfig::parse(&raw).map_err(|e| Error::StoredConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(Stored { raw, config }))
    }

    /// The staged configuration waiting for the next start, if there is one
    /// that parses (one that does not is set aside at promotion).
    pub fn staged(&self) -> Result<Option<MachineConfig>, Error> {
        let path = self.path(STAGED);
        match fs::read_to_string(&path) {
            Ok(raw) => Ok(MachineConfig::parse(&raw).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Persist { path, source }),
        }
    }

    /// The configuration that the one in force replaced, if any.
    pub fn previous(&self) -> Result<Option<String>, Error> {
        let path = self.path(PREVIOUS);
        match fs::read_to_string(&path) {
            Ok(raw) => Ok(Some(raw)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Persist { path, source }),
        }
    }

    /// Makes `raw` the configuration in force, keeping the one it replaces as
    /// the previous one. The caller has validated `raw`. A trial in progress
    /// ends.
    ///
    /// Order: the old document is first copied to `config.previous.yaml`
    /// (atomically), then the new one replaces `config.yaml` (atomically).
    /// A cut between the two leaves the old document in force.
    ///
    /// With `trial`, the new document goes in on trial: the marker is
    /// written before it, so a cut at any point after leaves a trial that
    /// the next start ends. A trial on top of a trial keeps the previous
    /// document: the last confirmed one, which every revert returns to.
    pub fn store(&self, raw: &str, trial: bool) -> Result<(), Error> {
        self.ensure_dir()?;
        if !(trial && self.trial_in_progress())
            && let Some(old) = self.read_current()?
        {
            self.write(PREVIOUS, &old)?;
        }
        if trial {
            self.set_trial(true)?;
        }
        self.write(CURRENT, raw)?;
        if !trial {
            self.set_trial(false)?;
        }
        Ok(())
    }

    /// Puts `raw` aside for the next start.
    pub fn stage(&self, raw: &str) -> Result<(), Error> {
        self.ensure_dir()?;
        self.write(STAGED, raw)
    }

    /// Removes every configuration file: the node returns to maintenance
    /// mode at its next start.
    pub fn wipe(&self) -> Result<(), Error> {
        for name in [TRYING, STAGED, CURRENT, PREVIOUS] {
            let path = self.path(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Persist { path, source }),
            }
        }
        if self.dir.is_dir() {
            bramble_atomic::sync_dir(&self.dir)
                .map_err(io::Error::from)
                .map_err(|source| Error::Persist {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn read_current(&self) -> Result<Option<String>, Error> {
        let path = self.path(CURRENT);
        match fs::read_to_string(&path) {
            Ok(raw) => Ok(Some(raw)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Persist { path, source }),
        }
    }

    fn write(&self, name: &str, raw: &str) -> Result<(), Error> {
        let path = self.path(name);
        bramble_atomic::write(&path, raw.as_bytes(), FILE_MODE).map_err(|e| Error::Persist {
            path,
            source: e.into(),
        })
    }

    fn ensure_dir(&self) -> Result<(), Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.dir)
            .map_err(|source| Error::StateDir {
                path: self.dir.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = include_str!("../../../lib/config/tests/data/full.yaml");

    #[test]
    fn stacked_trials_return_to_the_last_confirmed_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("config"));
        let confirmed = VALID.to_owned();
        let first = VALID.replacen("machine:\n", "machine:\n  hostname: first-try\n", 1);
        let second = VALID.replacen("machine:\n", "machine:\n  hostname: second-try\n", 1);
        store.store(&confirmed, false).unwrap();
        store.store(&first, true).unwrap();
        assert!(store.trial_in_progress());
        store.store(&second, true).unwrap();
        assert_eq!(
            store.previous().unwrap().as_deref(),
            Some(confirmed.as_str())
        );
        // A restart in the middle ends the trial with the confirmed one back.
        assert!(store.end_unfinished_trial().unwrap());
        assert_eq!(store.load().unwrap().unwrap().raw, confirmed);
        assert!(!store.trial_in_progress());
        // A plain apply after a trial keeps the tried one as the previous.
        store.store(&first, true).unwrap();
        store.store(&second, false).unwrap();
        assert!(!store.trial_in_progress());
        assert_eq!(store.previous().unwrap().as_deref(), Some(first.as_str()));
    }

    #[test]
    fn adopts_a_config_placed_at_flash_time_only_in_maintenance_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("config"));
        assert!(!store.adopt_from_boot().unwrap(), "nothing to adopt");

        // Invalid: set aside, still maintenance mode.
        fs::create_dir_all(store.dir()).unwrap();
        let bad = VALID.replace("type: controlplane", "type: toaster");
        fs::write(store.path(FROM_BOOT), &bad).unwrap();
        assert!(!store.adopt_from_boot().unwrap());
        assert!(store.load().unwrap().is_none());
        assert_eq!(
            fs::read_to_string(store.path("config.from-boot.rejected.yaml")).unwrap(),
            bad
        );
        assert!(!store.path(FROM_BOOT).exists());

        // Valid: stored byte for byte as the configuration in force.
        fs::write(store.path(FROM_BOOT), VALID).unwrap();
        assert!(store.adopt_from_boot().unwrap());
        assert_eq!(store.load().unwrap().unwrap().raw, VALID);
        assert!(!store.path(FROM_BOOT).exists());
        assert!(store.previous().unwrap().is_none());

        // Configured already: another one is ignored, set aside.
        fs::write(store.path(FROM_BOOT), "version: v1alpha1\n").unwrap();
        assert!(!store.adopt_from_boot().unwrap());
        assert_eq!(store.load().unwrap().unwrap().raw, VALID);
        assert!(store.path("config.from-boot.ignored.yaml").exists());
    }
}

//! Kernel module loading without udev.
//!
//! The image builder ships `modules.dep` and `modules.alias` (depmod formats)
//! for the modules it selected. Coldplug reads the `modalias` of every device
//! on a bus and of every input device (`/sys/bus/*/devices/*`,
//! `/sys/class/input/*`), matches each against the alias patterns and loads
//! the matching modules, dependencies first, with `finit_module(2)`. Loading a driver can
//! make new devices appear (a PCI bus reveals virtio devices): their uevents
//! name them ([`crate::hotplug::coldplug`]), or, without a uevent socket,
//! coldplug runs in rounds until a round loads nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use bramble_init::alias::fnmatch;

use crate::error::{Error, Result};

/// Bound on the devices one coldplug pass reads.
const MAX_SYSFS_ENTRIES: usize = 200_000;

#[derive(Debug, Default)]
pub struct Database {
    dir: PathBuf,
    /// Module name → its file and its dependencies' files, relative to `dir`,
    /// as depmod lists them (a dependency's own dependencies come after it).
    deps: HashMap<String, (String, Vec<String>)>,
    aliases: Vec<(String, String)>,
    builtin: HashSet<String>,
    loaded: HashSet<String>,
    handled_aliases: HashSet<String>,
    /// Where coldplug time went, for the boot log.
    pub stats: ColdplugStats,
}

/// Time spent by coldplug passes since the database was loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct ColdplugStats {
    /// Passes over sysfs.
    pub passes: u32,
    /// Walking sysfs for `modalias` files.
    pub walk: std::time::Duration,
    /// Matching modaliases against `modules.alias`.
    pub matching: std::time::Duration,
    /// In `finit_module(2)` (the kernel linking and initialising modules).
    pub loading: std::time::Duration,
}

impl std::fmt::Display for ColdplugStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pass(es): sysfs walk {} ms, alias matching {} ms, module loading {} ms",
            self.passes,
            self.walk.as_millis(),
            self.matching.as_millis(),
            self.loading.as_millis()
        )
    }
}

/// Module names compare with `-` and `_` as the same character.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize(file.strip_suffix(".ko").unwrap_or(file))
}

impl Database {
    /// Reads `modules.dep`, `modules.alias` and `modules.builtin` from `dir`
    /// (normally `/lib/modules/$(uname -r)`).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &'static str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|e| Error::io("reading", path, e))
        };
        let mut db = Self::parse(&read("modules.dep")?, &read("modules.alias")?);
        db.dir = dir.to_path_buf();
        if let Ok(builtin) = read("modules.builtin") {
            db.builtin = builtin.lines().map(name_of).collect();
        }
        Ok(db)
    }

    pub(crate) fn parse(dep: &str, alias: &str) -> Self {
        let mut deps = HashMap::new();
        for line in dep.lines() {
            if let Some((module, rest)) = line.split_once(':') {
                let list = rest.split_whitespace().map(str::to_owned).collect();
                deps.insert(name_of(module), (module.to_owned(), list));
            }
        }
        let aliases = alias
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => {
                        Some((pattern.to_owned(), normalize(module)))
                    }
                    _ => None,
                }
            })
            .collect();
        Self {
            deps,
            aliases,
            ..Self::default()
        }
    }

    /// Whether `name` is a module of this image or built into the kernel.
    pub fn knows(&self, name: &str) -> bool {
        let name = normalize(name);
        self.deps.contains_key(&name) || self.builtin.contains(&name)
    }

    /// Modules whose alias patterns match `modalias`.
    pub fn modules_for(&self, modalias: &str) -> BTreeSet<String> {
        self.aliases
            .iter()
            .filter(|(pattern, _)| fnmatch(pattern.as_bytes(), modalias.as_bytes()))
            .map(|(_, module)| module.clone())
            .collect()
    }

    /// Loads `name` and everything it depends on. Builtin and already loaded
    /// modules succeed at once.
    pub fn load_module(&mut self, name: &str) -> Result<bool> {
        let name = normalize(name);
        if self.loaded.contains(&name) || self.builtin.contains(&name) {
            return Ok(false);
        }
        if Path::new("/sys/module").join(&name).exists() {
            self.loaded.insert(name);
            return Ok(false);
        }
        let (file, deps) = self.deps.get(&name).cloned().ok_or_else(|| Error::Module {
            name: name.clone(),
            reason: "not in modules.dep (not shipped in this image)".into(),
        })?;
        // depmod lists a module's dependencies so that the last needs nothing
        // else in the list: load from the end.
        for dep in deps.iter().rev() {
            let dep_name = name_of(dep);
            if !self.loaded.contains(&dep_name)
                && !Path::new("/sys/module").join(&dep_name).exists()
            {
                self.insert(&dep_name, dep)?;
            }
            self.loaded.insert(dep_name);
        }
        self.insert(&name, &file)?;
        self.loaded.insert(name);
        Ok(true)
    }

    fn insert(&self, name: &str, file: &str) -> Result<()> {
        let path = self.dir.join(file);
        let handle = File::open(&path).map_err(|e| Error::io("opening module", &path, e))?;
        let params = CString::default();
        match nix::kmod::finit_module(&handle, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => {
                tracing::debug!("loaded module {name}");
                Ok(())
            }
            Err(errno) => Err(Error::Module {
                name: name.to_owned(),
                reason: format!("finit_module {}: {errno}", path.display()),
            }),
        }
    }

    /// Loads the modules matching one device's `modalias`, once per distinct
    /// modalias; returns the names of those it loaded. Failures are
    /// reported and do not stop the others.
    pub fn load_for_device(&mut self, modalias: &str) -> Vec<String> {
        if !self.handled_aliases.insert(modalias.to_owned()) {
            return Vec::new();
        }
        let matching = std::time::Instant::now();
        let modules = self.modules_for(modalias);
        self.stats.matching += matching.elapsed();
        let mut loaded = Vec::new();
        for module in modules {
            let loading = std::time::Instant::now();
            let result = self.load_module(&module);
            self.stats.loading += loading.elapsed();
            match result {
                Ok(true) => loaded.push(module),
                Ok(false) => {}
                Err(err) => tracing::warn!("{err} (for device {modalias})"),
            }
        }
        loaded
    }

    /// One coldplug pass over the devices under `sysfs`; returns how many modules it
    /// loaded. Failures are reported and do not stop the pass.
    pub fn coldplug_once(&mut self, sysfs: &Path) -> usize {
        let started = std::time::Instant::now();
        let modaliases = collect_modaliases(sysfs);
        self.stats.passes += 1;
        self.stats.walk += started.elapsed();
        modaliases
            .iter()
            .map(|modalias| self.load_for_device(modalias).len())
            .sum()
    }

    /// Coldplug until a pass loads nothing (at most `max_rounds` passes).
    pub fn coldplug(&mut self, sysfs: &Path, max_rounds: usize) -> usize {
        let mut total = 0;
        for _ in 0..max_rounds {
            let loaded = self.coldplug_once(sysfs);
            total += loaded;
            if loaded == 0 {
                break;
            }
        }
        total
    }
}

/// Every distinct `modalias` of the devices under `sysfs` (normally `/sys`):
/// those on a bus (`bus/*/devices/*/modalias`) and input devices
/// (`class/input/*/modalias`: they are on no bus, and their modalias loads
/// `evdev`). Devices of other classes with a modalias are bus devices too.
///
/// This finds what walking all of `/sys/devices` finds, while reading one
/// small directory per bus instead of every attribute directory of
/// every device (on an emulated CPU the walk took half a second a pass).
pub fn collect_modaliases(sysfs: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut seen = 0usize;
    let buses = fs::read_dir(sysfs.join("bus"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|bus| bus.path().join("devices"));
    for dir in buses.chain([sysfs.join("class/input")]) {
        let Ok(devices) = fs::read_dir(&dir) else {
            continue;
        };
        for device in devices.flatten() {
            seen += 1;
            if seen > MAX_SYSFS_ENTRIES {
                tracing::warn!(
                    "stopped reading {} after {MAX_SYSFS_ENTRIES} devices",
                    sysfs.display()
                );
                return found;
            }
            if let Ok(value) = fs::read_to_string(device.path().join("modalias")) {
                let value = value.trim();
                if !value.is_empty() {
                    found.insert(value.to_owned());
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_depmod_files_and_matches_aliases() {
        let dep = "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko\n\
                   kernel/fs/jbd2/jbd2.ko:\nkernel/drivers/char/hw_random/virtio-rng.ko:\n";
        let alias =
            "# comment\nalias fs-ext4 ext4\nalias virtio:d00000004v* virtio-rng\nbogus line\n";
        let db = Database::parse(dep, alias);
        assert_eq!(
            db.deps["ext4"].1,
            vec!["kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko"]
        );
        assert!(db.deps.contains_key("virtio_rng"));
        assert_eq!(
            db.modules_for("virtio:d00000004v00001AF4")
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["virtio_rng".to_owned()]
        );
        assert!(db.modules_for("virtio:d00000009v00001AF4").is_empty());
    }

    #[test]
    fn collects_modaliases_of_every_bus_device() {
        let dir = tempfile::tempdir().unwrap();
        let devices = dir.path().join("devices/platform");
        for (name, alias) in [
            ("virtio0", "virtio:d00000002v00001AF4\n"),
            ("gpio-keys", "of:Ngpio-keysT(null)Cgpio-keys\n"),
            ("no-alias", "\n"),
        ] {
            fs::create_dir_all(devices.join(name)).unwrap();
            fs::write(devices.join(name).join("modalias"), alias).unwrap();
        }
        let bus = dir.path().join("bus");
        for (b, name) in [
            ("virtio", "virtio0"),
            ("platform", "gpio-keys"),
            ("platform", "no-alias"),
        ] {
            fs::create_dir_all(bus.join(b).join("devices")).unwrap();
            std::os::unix::fs::symlink(devices.join(name), bus.join(b).join("devices").join(name))
                .unwrap();
        }
        // A bus without devices, and a device without a modalias file.
        fs::create_dir_all(bus.join("empty")).unwrap();
        fs::create_dir_all(bus.join("virtio/devices/virtio1")).unwrap();
        // A class device (input devices are on no bus).
        let input = dir.path().join("class/input/input0");
        fs::create_dir_all(&input).unwrap();
        fs::write(
            input.join("modalias"),
            "input:b0019v0001p0001e0100-e0,1,k74,ramlsfw\n",
        )
        .unwrap();
        let found = collect_modaliases(dir.path());
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec![
                "input:b0019v0001p0001e0100-e0,1,k74,ramlsfw".to_owned(),
                "of:Ngpio-keysT(null)Cgpio-keys".to_owned(),
                "virtio:d00000002v00001AF4".to_owned()
            ]
        );
    }

    #[test]
    fn unknown_module_is_a_clear_error() {
        let mut db = Database::parse("", "");
        let err = db.load_module("no-such-driver").unwrap_err().to_string();
        assert!(
            err.contains("no_such_driver") && err.contains("not in modules.dep"),
            "{err}"
        );
    }
}

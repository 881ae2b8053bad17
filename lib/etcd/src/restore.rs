//! A member's data made from a snapshot, for `nodectl bootstrap
//! --recover-from`: Debian's `etcdctl snapshot restore` (etcd 3.4) rewrites
//! the membership in the snapshot's database to this one member and writes a
//! fresh write-ahead log; etcd then starts from that data as from any other.
//!
//! It restores into `<data dir>.restoring` and renames that to the data
//! directory only when `etcdctl` succeeded, so a failed restore leaves the
//! node as it was: no data, the request and the snapshot in place.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Layout};

/// How much of `etcdctl`'s output an error carries.
const OUTPUT_TAIL: usize = 4096;

/// One restore: which snapshot, and the member it makes.
#[derive(Debug, Clone, Copy)]
pub struct Restore<'a> {
    /// `etcdctl` (`/usr/bin/etcdctl` on the node).
    pub etcdctl: &'a Path,
    /// The snapshot, as `etcdctl snapshot save` (or `nodectl etcd
    /// snapshot`) wrote it: etcd's hash at its end is checked.
    pub snapshot: &'a Path,
    /// The member's name (`--name`).
    pub name: &'a str,
    /// `cluster.name`, the initial cluster token.
    pub cluster: &'a str,
    /// The member's peer URL.
    pub peer_url: &'a str,
    /// Where the data goes.
    pub layout: &'a Layout,
    /// etcd's user and group, who then owns the data (`None`: the caller).
    pub owner: Option<(u32, u32)>,
}

impl Restore<'_> {
    /// Where `etcdctl` writes before the data is renamed into place.
    pub fn staging_dir(&self) -> PathBuf {
        let mut dir = OsString::from(self.layout.data_dir.as_os_str());
        dir.push(".restoring");
        PathBuf::from(dir)
    }

    /// Restores the snapshot into the (absent or empty) data directory,
    /// then removes the snapshot. On an error nothing changed but a removed
    /// staging directory.
    pub fn run(&self) -> Result<(), Error> {
        let data = &self.layout.data_dir;
        if let Some(entry) = std::fs::read_dir(data)
            .ok()
            .and_then(|mut entries| entries.next())
        {
            let entry = entry.map_err(Error::io("reading", data))?;
            return Err(Error::Restore(format!(
                "{} is not empty (it holds {:?}): a snapshot is restored only on a node without etcd data",
                data.display(),
                entry.file_name()
            )));
        }
        let staging = self.staging_dir();
        remove_dir_if_exists(&staging)?;
        let result = self.restore_into(&staging);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn restore_into(&self, staging: &Path) -> Result<(), Error> {
        let initial_cluster = format!("{}={}", self.name, self.peer_url);
        let mut cmd = Command::new(self.etcdctl);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/sbin:/bin")
            .env("ETCDCTL_API", "3")
            .arg("snapshot")
            .arg("restore")
            .arg(self.snapshot)
            .args(["--name", self.name])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", self.cluster])
            .args(["--initial-advertise-peer-urls", self.peer_url])
            .arg("--data-dir")
            .arg(staging);
        tracing::info!(
            snapshot = %self.snapshot.display(),
            member = self.name,
            peer_url = self.peer_url,
            "etcdctl snapshot restore"
        );
        let out = cmd.output().map_err(Error::io("running", self.etcdctl))?;
        if !out.status.success() {
            let mut said = String::from_utf8_lossy(&out.stderr).into_owned();
            said.push_str(&String::from_utf8_lossy(&out.stdout));
            let said = said.trim();
            let tail = match said.char_indices().rev().nth(OUTPUT_TAIL) {
                Some((i, _)) => &said[i..],
                None => said,
            };
            return Err(Error::Restore(format!(
                "{} snapshot restore {} failed ({}): {tail}",
                self.etcdctl.display(),
                self.snapshot.display(),
                out.status
            )));
        }
        if !staging.join("member/wal").is_dir() {
            return Err(Error::Restore(format!(
                "{} succeeded but wrote no write-ahead log in {}",
                self.etcdctl.display(),
                staging.display()
            )));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))
                .map_err(Error::io("setting the mode of", staging))?;
        }
        if let Some((uid, gid)) = self.owner {
            chown_tree(staging, uid, gid)?;
        }
        sync_tree(staging)?;
        let data = &self.layout.data_dir;
        match std::fs::remove_dir(data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing the empty", data)(e)),
        }
        bramble_atomic::rename(staging, data)?;
        bramble_atomic::remove_if_exists(self.snapshot)?;
        tracing::info!(data = %data.display(), "snapshot restored");
        Ok(())
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", dir)(e)),
    }
}

/// `chown -R`, without following symbolic links.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(Error::io("handing to etcd's user", path))?;
    let meta = std::fs::symlink_metadata(path).map_err(Error::io("reading", path))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(Error::io("reading", path))? {
            let entry = entry.map_err(Error::io("reading", path))?;
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// fsync of every file and directory under `path`.
fn sync_tree(path: &Path) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(path).map_err(Error::io("reading", path))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(Error::io("reading", path))? {
            let entry = entry.map_err(Error::io("reading", path))?;
            sync_tree(&entry.path())?;
        }
    } else if !meta.is_file() {
        return Ok(());
    }
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("syncing", path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn restore<'a>(layout: &'a Layout, etcdctl: &'a Path, snapshot: &'a Path) -> Restore<'a> {
        Restore {
            etcdctl,
            snapshot,
            name: "cp1",
            cluster: "test",
            peer_url: "https://127.0.0.1:2380",
            layout,
            owner: None,
        }
    }

    #[test]
    fn a_failed_restore_changes_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path());
        let snapshot = dir.path().join("snap.db");
        std::fs::write(&snapshot, b"not a snapshot").unwrap();
        // A stand-in for etcdctl that writes half a data directory and fails.
        let fake = dir.path().join("etcdctl");
        std::fs::write(
            &fake,
            "#!/bin/sh\nfor a; do last=$a; done\nmkdir -p \"$last/member\"\necho 'Error: bad snapshot' >&2\nexit 1\n",
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir_all(&layout.data_dir).unwrap();
        let r = restore(&layout, &fake, &snapshot);
        let e = r.run().unwrap_err().to_string();
        assert!(e.contains("Error: bad snapshot"), "{e}");
        assert!(snapshot.exists());
        assert!(!r.staging_dir().exists());
        assert!(!layout.has_data());
    }

    #[test]
    fn data_already_there_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path());
        std::fs::create_dir_all(layout.data_dir.join("member/wal")).unwrap();
        let snapshot = dir.path().join("snap.db");
        std::fs::write(&snapshot, b"x").unwrap();
        let e = restore(&layout, Path::new("/nonexistent/etcdctl"), &snapshot)
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not empty"), "{e}");
        assert!(snapshot.exists());
    }
}

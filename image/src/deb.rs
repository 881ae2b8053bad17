//! Reading files out of a `.deb` without dpkg: an `ar` archive whose `data.tar.xz`
//! (or `.zst`, `.gz`, plain `.tar`) member holds the package's files.

use std::io::{Cursor, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// Kind of a member of the data tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file (contents follow).
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (hard link, device, ...).
    Other,
}

/// Calls `visit(path, kind, contents)` for every member of the package's data
/// tarball, in archive order. `path` has the leading `./` removed (`usr/lib/x`);
/// `contents` is a reader over a regular file's bytes (empty for other kinds).
/// Return an error from `visit` to stop.
pub fn for_each_file<F>(deb_path: &Path, deb: &[u8], mut visit: F) -> Result<()>
where
    F: FnMut(&str, Kind, &mut dyn Read) -> Result<()>,
{
    let bad = |reason: String| Error::BadDeb {
        path: deb_path.to_path_buf(),
        reason,
    };
    let mut archive = ar::Archive::new(Cursor::new(deb));
    while let Some(member) = archive.next_entry() {
        let member = member.map_err(|e| bad(format!("ar archive: {e}")))?;
        let id = String::from_utf8_lossy(member.header().identifier()).into_owned();
        let id = id.trim_end_matches('/');
        if !id.starts_with("data.tar") {
            continue;
        }
        let decoder = data_decoder(member, id).map_err(bad)?;
        let mut tar = tar::Archive::new(decoder);
        let entries = tar.entries().map_err(|e| bad(format!("{id}: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("{id}: {e}")))?;
            let raw_path = entry
                .path()
                .map_err(|e| bad(format!("{id}: bad member path: {e}")))?
                .to_string_lossy()
                .into_owned();
            let path = raw_path.trim_start_matches("./").trim_end_matches('/');
            if path.is_empty() || path == "." {
                continue;
            }
            let kind = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink,
                _ => Kind::Other,
            };
            let path = path.to_string();
            visit(&path, kind, &mut entry).map_err(|e| match e {
                Error::Io { source, .. } if source.kind() != std::io::ErrorKind::NotFound => {
                    bad(format!("{id}: reading `{path}`: {source}"))
                }
                other => other,
            })?;
        }
        return Ok(());
    }
    Err(bad("no data.tar.* member".into()))
}

/// A reader of the uncompressed data tarball in `member` (named `id`).
fn data_decoder<'a, R: Read + 'a>(
    member: R,
    id: &str,
) -> std::result::Result<Box<dyn Read + 'a>, String> {
    Ok(match id {
        "data.tar" => Box::new(member),
        "data.tar.xz" => Box::new(liblzma::read::XzDecoder::new(member)),
        "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(member)),
        "data.tar.zst" => Box::new(
            ruzstd::decoding::StreamingDecoder::new(member).map_err(|e| format!("{id}: {e}"))?,
        ),
        other => return Err(format!("unsupported data member `{other}`")),
    })
}

/// Every symbolic link in the package's data tarball, as `(path, target)`
/// (`path` without its leading `./`, the target as stored).
pub fn symlinks(deb_path: &Path, deb: &[u8]) -> Result<Vec<(String, String)>> {
    let bad = |reason: String| Error::BadDeb {
        path: deb_path.to_path_buf(),
        reason,
    };
    let mut links = Vec::new();
    let mut archive = ar::Archive::new(Cursor::new(deb));
    while let Some(member) = archive.next_entry() {
        let member = member.map_err(|e| bad(format!("ar archive: {e}")))?;
        let id = String::from_utf8_lossy(member.header().identifier()).into_owned();
        let id = id.trim_end_matches('/').to_owned();
        if !id.starts_with("data.tar") {
            continue;
        }
        let decoder = data_decoder(member, &id).map_err(bad)?;
        let mut tar = tar::Archive::new(decoder);
        for entry in tar.entries().map_err(|e| bad(format!("{id}: {e}")))? {
            let entry = entry.map_err(|e| bad(format!("{id}: {e}")))?;
            if entry.header().entry_type() != tar::EntryType::Symlink {
                continue;
            }
            let path = entry
                .path()
                .map_err(|e| bad(format!("{id}: bad member path: {e}")))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            let target = entry
                .link_name()
                .map_err(|e| bad(format!("{id}: `{path}`: bad link target: {e}")))?
                .map(|t| t.to_string_lossy().into_owned())
                .ok_or_else(|| bad(format!("{id}: `{path}`: symlink without a target")))?;
            links.push((path, target));
        }
        return Ok(links);
    }
    Err(bad("no data.tar.* member".into()))
}

/// Reads a regular file's contents from the visitor's reader.
pub fn read_all(path: &str, r: &mut dyn Read) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).map_err(Error::io(path))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny .deb (ar: debian-binary, control.tar.gz, data.tar.<ext>).
    pub(crate) fn make_deb(files: &[(&str, &[u8])], xz: bool) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, format!("./{path}"), *data).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let (name, data): (&str, Vec<u8>) = if xz {
            let mut out = Vec::new();
            let mut enc = liblzma::read::XzEncoder::new(&tar[..], 1);
            enc.read_to_end(&mut out).unwrap();
            ("data.tar.xz", out)
        } else {
            let mut out = Vec::new();
            let mut enc = flate2::read::GzEncoder::new(&tar[..], flate2::Compression::fast());
            enc.read_to_end(&mut out).unwrap();
            ("data.tar.gz", out)
        };
        let mut ar = ar::Builder::new(Vec::new());
        ar.append(
            &ar::Header::new(b"debian-binary".to_vec(), 4),
            &b"2.0\n"[..],
        )
        .unwrap();
        ar.append(
            &ar::Header::new(name.as_bytes().to_vec(), data.len() as u64),
            &data[..],
        )
        .unwrap();
        ar.into_inner().unwrap()
    }

    #[test]
    fn reads_members_of_xz_and_gz_debs() {
        for xz in [true, false] {
            let deb = make_deb(&[("usr/lib/a", b"A"), ("etc/b", b"BB")], xz);
            let mut seen = Vec::new();
            for_each_file(Path::new("t.deb"), &deb, |p, k, r| {
                seen.push((p.to_string(), k, read_all(p, r)?));
                Ok(())
            })
            .unwrap();
            assert_eq!(
                seen,
                vec![
                    ("usr/lib/a".to_string(), Kind::File, b"A".to_vec()),
                    ("etc/b".to_string(), Kind::File, b"BB".to_vec()),
                ]
            );
        }
        let err = for_each_file(Path::new("t.deb"), b"!<arch>\n", |_, _, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.deb") && err.contains("no data.tar"),
            "{err}"
        );
    }
}

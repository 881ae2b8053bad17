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

/// One member of the package's data tarball, as [`for_each_member`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The path without its leading `./` (`usr/lib/x`).
    pub path: String,
    /// What the member is.
    pub kind: Kind,
    /// Permission bits as the package stores them (`0o755`).
    pub mode: u32,
    /// A symbolic link's target as stored; `None` for other kinds.
    pub link_target: Option<String>,
}

/// Calls `visit(path, kind, contents)` for every member of the package's data
/// tarball, in archive order. `path` has the leading `./` removed (`usr/lib/x`);
/// `contents` is a reader over a regular file's bytes (empty for other kinds).
/// Return an error from `visit` to stop.
pub fn for_each_file<F>(deb_path: &Path, deb: &[u8], mut visit: F) -> Result<()>
where
    F: FnMut(&str, Kind, &mut dyn Read) -> Result<()>,
{
    for_each_member(deb_path, deb, |m, r| visit(&m.path, m.kind, r))
}

/// Like [`for_each_file`], with each member's mode and symlink target.
pub fn for_each_member<F>(deb_path: &Path, deb: &[u8], mut visit: F) -> Result<()>
where
    F: FnMut(&Member, &mut dyn Read) -> Result<()>,
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
            let mode = entry
                .header()
                .mode()
                .map_err(|e| bad(format!("{id}: `{path}`: bad mode: {e}")))?
                & 0o7777;
            let link_target = if kind == Kind::Symlink {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(format!("{id}: `{path}`: bad link target: {e}")))?
                    .map(|t| t.to_string_lossy().into_owned())
                    .ok_or_else(|| bad(format!("{id}: `{path}`: symlink without a target")))?;
                Some(target)
            } else {
                None
            };
            let member = Member {
                path: path.to_string(),
                kind,
                mode,
                link_target,
            };
            visit(&member, &mut entry).map_err(|e| match e {
                Error::Io { source, .. } if source.kind() != std::io::ErrorKind::NotFound => {
                    bad(format!("{id}: reading `{}`: {source}", member.path))
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
    let mut links = Vec::new();
    for_each_member(deb_path, deb, |m, _| {
        if let Some(target) = &m.link_target {
            links.push((m.path.clone(), target.clone()));
        }
        Ok(())
    })?;
    Ok(links)
}

/// Reads a regular file's contents from the visitor's reader.
pub fn read_all(path: &str, r: &mut dyn Read) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).map_err(Error::io(path))?;
    Ok(buf)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A member of a test package.
    pub(crate) enum TestMember<'a> {
        /// A regular file: path, mode, contents.
        File(&'a str, u32, &'a [u8]),
        /// A symbolic link: path, target.
        Symlink(&'a str, &'a str),
        /// A directory.
        Dir(&'a str),
    }

    /// Builds a tiny .deb (ar: debian-binary, control.tar.gz, data.tar.<ext>).
    pub(crate) fn make_deb(files: &[(&str, &[u8])], xz: bool) -> Vec<u8> {
        let members: Vec<TestMember<'_>> = files
            .iter()
            .map(|(path, data)| TestMember::File(path, 0o644, data))
            .collect();
        make_deb_members(&members, xz)
    }

    /// Builds a tiny .deb holding these members, in this order.
    pub(crate) fn make_deb_members(members: &[TestMember<'_>], xz: bool) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for member in members {
            let mut h = tar::Header::new_gnu();
            match member {
                TestMember::File(path, mode, data) => {
                    h.set_size(data.len() as u64);
                    h.set_mode(*mode);
                    h.set_entry_type(tar::EntryType::Regular);
                    tar.append_data(&mut h, format!("./{path}"), *data).unwrap();
                }
                TestMember::Symlink(path, target) => {
                    h.set_size(0);
                    h.set_mode(0o777);
                    h.set_entry_type(tar::EntryType::Symlink);
                    tar.append_link(&mut h, format!("./{path}"), target)
                        .unwrap();
                }
                TestMember::Dir(path) => {
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_entry_type(tar::EntryType::Directory);
                    tar.append_data(&mut h, format!("./{path}/"), &[][..])
                        .unwrap();
                }
            }
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
    fn members_carry_modes_and_link_targets() {
        let deb = make_deb_members(
            &[
                TestMember::Dir("usr/bin"),
                TestMember::File("usr/bin/x", 0o755, b"#!"),
                TestMember::Symlink("usr/bin/y", "x"),
            ],
            true,
        );
        let mut seen = Vec::new();
        for_each_member(Path::new("t.deb"), &deb, |m, _| {
            seen.push(m.clone());
            Ok(())
        })
        .unwrap();
        let member = |path: &str, kind, mode, link: Option<&str>| Member {
            path: path.into(),
            kind,
            mode,
            link_target: link.map(str::to_owned),
        };
        assert_eq!(
            seen,
            vec![
                member("usr/bin", Kind::Dir, 0o755, None),
                member("usr/bin/x", Kind::File, 0o755, None),
                member("usr/bin/y", Kind::Symlink, 0o777, Some("x")),
            ]
        );
        assert_eq!(
            symlinks(Path::new("t.deb"), &deb).unwrap(),
            vec![("usr/bin/y".to_owned(), "x".to_owned())]
        );
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

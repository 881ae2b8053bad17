//! Checking ELF files for the node: Bramble's own binaries must be static
//! aarch64 executables ([`check_aarch64_static`]); the dynamically linked
//! programs taken from Debian packages (`boot/rootfs-packages.txt`) must find
//! their program interpreter and every library they need in the root file
//! system ([`check_loadable`]).

use std::collections::BTreeSet;
use std::path::Path;

use object::read::elf::{Dyn as _, ElfFile64, ProgramHeader as _};
use object::{Architecture, Endianness, Object, ObjectKind};

use crate::error::{Error, Result};
use crate::tree::{Kind, Tree};

/// The directories glibc's loader searches for a DT_NEEDED library by name,
/// as paths in the root file system. The node has no `/etc/ld.so.cache`, so
/// these built-in defaults are where a library must be.
pub const LIBRARY_DIRS: [&str; 3] = ["lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib"];

/// Checks that `data` (read from `path`) is a 64-bit aarch64 executable (static or
/// static-pie) with no program interpreter: nothing on the node could load one.
pub fn check_aarch64_static(path: &Path, data: &[u8]) -> Result<()> {
    let bad = |reason: String| Error::BadBinary {
        path: path.to_path_buf(),
        reason,
    };
    let file = object::File::parse(data).map_err(|e| bad(format!("not an ELF executable: {e}")))?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(bad(format!("is {:?}, not ELF", file.format())));
    }
    if file.architecture() != Architecture::Aarch64 {
        return Err(bad(format!(
            "is built for {:?}, not aarch64 (cross-build it for aarch64-unknown-linux-musl)",
            file.architecture()
        )));
    }
    match file.kind() {
        ObjectKind::Executable | ObjectKind::Dynamic => {}
        other => return Err(bad(format!("is an ELF {other:?} file, not an executable"))),
    }
    let elf =
        ElfFile64::<Endianness>::parse(data).map_err(|e| bad(format!("not a 64-bit ELF: {e}")))?;
    let endian = elf.endian();
    if elf
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP)
    {
        return Err(bad(
            "is dynamically linked (has a program interpreter); the image has no libc: build it static (musl, +crt-static)"
                .into(),
        ));
    }
    if !elf
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
    {
        return Err(bad("has no loadable segment".into()));
    }
    Ok(())
}

/// What an aarch64 ELF file asks of the dynamic loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// The program interpreter (PT_INTERP), e.g. `/lib/ld-linux-aarch64.so.1`.
    pub interpreter: Option<String>,
    /// The libraries it needs (DT_NEEDED), in order.
    pub needed: Vec<String>,
    /// Its own library name (DT_SONAME), for a shared library.
    pub soname: Option<String>,
}

/// Whether `data` starts with the ELF magic.
pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Reads the program interpreter, DT_NEEDED and DT_SONAME of the 64-bit aarch64
/// ELF file `data` (read from `path`), the way the kernel and the loader find
/// them: through the program headers (PT_INTERP, PT_DYNAMIC, and the PT_LOAD
/// segment that holds DT_STRTAB). Any other architecture is refused.
pub fn dynamic_info(path: &Path, data: &[u8]) -> Result<Dynamic> {
    let bad = |reason: String| Error::BadBinary {
        path: path.to_path_buf(),
        reason,
    };
    let elf = ElfFile64::<Endianness>::parse(data)
        .map_err(|e| bad(format!("not a 64-bit ELF file: {e}")))?;
    if elf.architecture() != Architecture::Aarch64 {
        return Err(bad(format!(
            "is built for {:?}, not aarch64: the node cannot run it (pin the package's arm64 build)",
            elf.architecture()
        )));
    }
    let endian = elf.endian();
    let headers = elf.elf_program_headers();
    let mut info = Dynamic::default();
    for ph in headers {
        if let Some(interp) = ph
            .interpreter(endian, data)
            .map_err(|e| bad(format!("PT_INTERP: {e}")))?
        {
            let interp =
                std::str::from_utf8(interp).map_err(|_| bad("PT_INTERP is not UTF-8".into()))?;
            info.interpreter = Some(interp.to_owned());
        }
    }
    let mut dynamic = None;
    for ph in headers {
        if let Some(d) = ph
            .dynamic(endian, data)
            .map_err(|e| bad(format!("PT_DYNAMIC: {e}")))?
        {
            dynamic = Some(d);
        }
    }
    let Some(dynamic) = dynamic else {
        return Ok(info);
    };
    let mut strtab = None;
    let mut strsz = None;
    let mut needed = Vec::new();
    let mut soname = None;
    for d in dynamic {
        let tag = d.tag(endian);
        if tag == object::elf::DT_NULL {
            break;
        } else if tag == object::elf::DT_STRTAB {
            strtab = Some(d.val(endian));
        } else if tag == object::elf::DT_STRSZ {
            strsz = Some(d.val(endian));
        } else if tag == object::elf::DT_NEEDED {
            needed.push(d.val(endian));
        } else if tag == object::elf::DT_SONAME {
            soname = Some(d.val(endian));
        }
    }
    if needed.is_empty() && soname.is_none() {
        return Ok(info);
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(bad(
            "has DT_NEEDED or DT_SONAME entries but no DT_STRTAB/DT_STRSZ".into(),
        ));
    };
    let mut strings = None;
    for ph in headers {
        if ph.p_type(endian) != object::elf::PT_LOAD {
            continue;
        }
        if let Ok(Some(bytes)) = ph.data_range(endian, data, strtab, strsz) {
            strings = Some(bytes);
            break;
        }
    }
    let strings = strings.ok_or_else(|| {
        bad(format!(
            "its dynamic string table (address {strtab:#x}, {strsz} bytes) is in no loadable segment"
        ))
    })?;
    let string = |offset: u64| -> Result<String> {
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|o| strings.get(o..))
            .ok_or_else(|| bad(format!("dynamic string offset {offset} is out of range")))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad(format!("dynamic string at {offset} is not terminated")))?;
        std::str::from_utf8(&rest[..end])
            .map(str::to_owned)
            .map_err(|_| bad(format!("dynamic string at {offset} is not UTF-8")))
    };
    for offset in needed {
        info.needed.push(string(offset)?);
    }
    info.soname = soname.map(string).transpose()?;
    Ok(info)
}

/// Checks that each ELF file at `paths` in `tree` can be started on the node:
/// it, and everything it loads, is aarch64; its program interpreter
/// (PT_INTERP) is a file in the tree; every library it needs (DT_NEEDED) is a
/// file in one of [`LIBRARY_DIRS`] (or at the path it names); and so on for
/// the interpreter and each library found. Symbolic links in the tree are
/// followed. Files at `paths` that are not ELF (scripts, data) are skipped;
/// static ELF files only have their architecture checked.
///
/// An error names the program (or the library, with the program it is loaded
/// for) and what is missing.
pub fn check_loadable(tree: &Tree, paths: &[String]) -> Result<()> {
    let mut checked: BTreeSet<String> = BTreeSet::new();
    // (path in the tree, the listed file it is loaded for)
    let mut queue: Vec<(String, String)> = paths
        .iter()
        .rev()
        .map(|p| {
            let p = p.trim_start_matches('/').to_owned();
            (p.clone(), p)
        })
        .collect();
    let file_at = |path: &str| match tree.resolve(path) {
        Some((real, node)) => match &node.kind {
            Kind::File(data) => Some((real, data.clone())),
            _ => None,
        },
        None => None,
    };
    while let Some((path, program)) = queue.pop() {
        // Dependencies are queued as the files they resolved to: only a
        // listed path can be missing here.
        let Some((real, data)) = file_at(&path) else {
            return Err(Error::Invalid {
                field: format!("/{path}"),
                reason: "is not a file in the root filesystem".into(),
            });
        };
        if !checked.insert(real.clone()) {
            continue;
        }
        if !is_elf(&data) {
            if path == program {
                continue;
            }
            return Err(Error::BadBinary {
                path: format!("/{real}").into(),
                reason: format!("is loaded for /{program} but is not an ELF file"),
            });
        }
        let info = dynamic_info(Path::new(&format!("/{real}")), &data)?;
        let needer = if path == program {
            format!("/{program}")
        } else {
            format!("/{real} (loaded for /{program})")
        };
        if let Some(interp) = &info.interpreter {
            let Some((found, _)) = file_at(interp) else {
                return Err(Error::MissingDependency {
                    program: needer,
                    what: "program interpreter",
                    name: interp.clone(),
                    looked: "is not a file in the root filesystem".into(),
                });
            };
            queue.push((found, program.clone()));
        }
        for lib in &info.needed {
            let found = if lib.contains('/') {
                file_at(lib)
            } else {
                LIBRARY_DIRS
                    .iter()
                    .find_map(|dir| file_at(&format!("{dir}/{lib}")))
            };
            let Some((found, _)) = found else {
                let looked = if lib.contains('/') {
                    "is not a file in the root filesystem".to_owned()
                } else {
                    let dirs: Vec<String> = LIBRARY_DIRS.iter().map(|d| format!("/{d}")).collect();
                    format!("is in none of {} in the root filesystem", dirs.join(", "))
                };
                return Err(Error::MissingDependency {
                    program: needer,
                    what: "shared library",
                    name: lib.clone(),
                    looked,
                });
            };
            queue.push((found, program.clone()));
        }
    }
    Ok(())
}

/// A minimal static aarch64 Linux executable that calls `exit(0)`: a stand-in for
/// the real binaries in tests and dry runs.
pub fn dummy_aarch64_executable() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const CODE_OFF: u64 = 64 + 56;
    let code: [u32; 3] = [
        0xd280_0000, // mov x0, #0
        0xd280_0ba8, // mov x8, #93 (exit)
        0xd400_0001, // svc #0
    ];
    let total = CODE_OFF + 4 * code.len() as u64;
    let mut v = Vec::with_capacity(total as usize);
    // ELF header
    v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v.extend_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    v.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    v.extend_from_slice(&(BASE + CODE_OFF).to_le_bytes()); // e_entry
    v.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    v.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    v.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    v.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    v.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    v.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    v.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    v.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // PT_LOAD, R+X, the whole file at BASE
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&5u32.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&BASE.to_le_bytes());
    v.extend_from_slice(&BASE.to_le_bytes());
    v.extend_from_slice(&total.to_le_bytes());
    v.extend_from_slice(&total.to_le_bytes());
    v.extend_from_slice(&0x1000u64.to_le_bytes());
    for insn in code {
        v.extend_from_slice(&insn.to_le_bytes());
    }
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `e_machine` of aarch64 and of x86-64.
    pub(crate) const EM_AARCH64: u16 = 183;
    const EM_X86_64: u16 = 62;

    /// A small ELF file of `machine` (ET_EXEC without a SONAME, ET_DYN with
    /// one) with this PT_INTERP, these DT_NEEDED and DT_SONAME: one PT_LOAD
    /// over the whole file, then PT_INTERP and PT_DYNAMIC, as a linker lays
    /// them out.
    pub(crate) fn dynamic_elf(
        machine: u16,
        interp: Option<&str>,
        needed: &[&str],
        soname: Option<&str>,
    ) -> Vec<u8> {
        const BASE: u64 = 0x40_0000;
        let phnum: u64 = if interp.is_some() { 3 } else { 2 };
        let interp_off = 64 + 56 * phnum;
        let interp_bytes: Vec<u8> = interp
            .map(|i| [i.as_bytes(), b"\0"].concat())
            .unwrap_or_default();
        let strtab_off = interp_off + interp_bytes.len() as u64;
        let mut strtab = vec![0u8];
        let mut offset_of = |name: &str| {
            let off = strtab.len() as u64;
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            off
        };
        let mut dyns: Vec<(u64, u64)> = needed.iter().map(|n| (1, offset_of(n))).collect();
        if let Some(name) = soname {
            dyns.push((14, offset_of(name)));
        }
        let dyn_off = (strtab_off + strtab.len() as u64).next_multiple_of(8);
        dyns.push((5, BASE + strtab_off));
        dyns.push((10, strtab.len() as u64));
        dyns.push((0, 0));
        let dyn_size = 16 * dyns.len() as u64;
        let total = dyn_off + dyn_size;

        let mut v = Vec::with_capacity(total as usize);
        v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        v.extend_from_slice(&[0; 8]);
        let e_type: u16 = if soname.is_some() { 3 } else { 2 };
        v.extend_from_slice(&e_type.to_le_bytes());
        v.extend_from_slice(&machine.to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&BASE.to_le_bytes()); // e_entry
        v.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        v.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        v.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        v.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        v.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        v.extend_from_slice(&(phnum as u16).to_le_bytes());
        v.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        v.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        v.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        let mut phdr = |p_type: u32, flags: u32, off: u64, size: u64, align: u64| {
            v.extend_from_slice(&p_type.to_le_bytes());
            v.extend_from_slice(&flags.to_le_bytes());
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&(BASE + off).to_le_bytes());
            v.extend_from_slice(&(BASE + off).to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&align.to_le_bytes());
        };
        phdr(1, 5, 0, total, 0x1000); // PT_LOAD
        if !interp_bytes.is_empty() {
            phdr(3, 4, interp_off, interp_bytes.len() as u64, 1); // PT_INTERP
        }
        phdr(2, 6, dyn_off, dyn_size, 8); // PT_DYNAMIC
        v.extend_from_slice(&interp_bytes);
        v.extend_from_slice(&strtab);
        v.resize(dyn_off as usize, 0);
        for (tag, val) in dyns {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&val.to_le_bytes());
        }
        v
    }

    const LOADER: &str = "/lib/ld-linux-aarch64.so.1";

    /// etcd's shape: a program that needs libc, which needs the loader.
    fn glibc_tree(with_libc: bool) -> Tree {
        let mut t = Tree::new();
        let prog = dynamic_elf(EM_AARCH64, Some(LOADER), &["libc.so.6"], None);
        t.file("usr/bin/etcd", 0o755, prog).unwrap();
        t.file(
            "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
            0o755,
            dynamic_elf(EM_AARCH64, None, &[], Some("ld-linux-aarch64.so.1")),
        )
        .unwrap();
        t.symlink(
            "lib/ld-linux-aarch64.so.1",
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
        )
        .unwrap();
        if with_libc {
            t.file(
                "lib/aarch64-linux-gnu/libc.so.6",
                0o644,
                dynamic_elf(
                    EM_AARCH64,
                    Some(LOADER),
                    &["ld-linux-aarch64.so.1"],
                    Some("libc.so.6"),
                ),
            )
            .unwrap();
        }
        t
    }

    #[test]
    fn reads_interpreter_needed_and_soname() {
        let p = Path::new("x");
        let prog = dynamic_elf(EM_AARCH64, Some(LOADER), &["libc.so.6", "libm.so.6"], None);
        assert_eq!(
            dynamic_info(p, &prog).unwrap(),
            Dynamic {
                interpreter: Some(LOADER.into()),
                needed: vec!["libc.so.6".into(), "libm.so.6".into()],
                soname: None,
            }
        );
        let lib = dynamic_elf(EM_AARCH64, None, &[], Some("libz.so.1"));
        assert_eq!(
            dynamic_info(p, &lib).unwrap().soname.as_deref(),
            Some("libz.so.1")
        );
        assert_eq!(
            dynamic_info(p, &dummy_aarch64_executable()).unwrap(),
            Dynamic::default()
        );
        let err = dynamic_info(p, &dynamic_elf(EM_X86_64, Some(LOADER), &[], None))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x: ") && err.contains("not aarch64"),
            "{err}"
        );
    }

    #[test]
    fn a_complete_closure_is_accepted() {
        let t = glibc_tree(true);
        check_loadable(&t, &["usr/bin/etcd".into()]).unwrap();
        // Static programs and non-ELF files pass as they are.
        let mut t = t;
        t.file("usr/bin/static", 0o755, dummy_aarch64_executable())
            .unwrap();
        t.file("usr/share/x.txt", 0o644, b"text".to_vec()).unwrap();
        check_loadable(
            &t,
            &[
                "/usr/bin/static".into(),
                "usr/share/x.txt".into(),
                "usr/bin/etcd".into(),
            ],
        )
        .unwrap();
    }

    #[test]
    fn a_missing_library_is_refused_by_name() {
        let t = glibc_tree(false);
        let err = check_loadable(&t, &["usr/bin/etcd".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/usr/bin/etcd: needs the shared library `libc.so.6`"),
            "{err}"
        );
        assert!(
            err.contains("/lib/aarch64-linux-gnu, /usr/lib/aarch64-linux-gnu, /lib"),
            "{err}"
        );
        assert!(err.contains("rootfs-packages.txt"), "{err}");

        // A library found is checked in turn, and named with its program.
        let mut t = glibc_tree(true);
        t.file(
            "usr/lib/aarch64-linux-gnu/libseccomp.so.2",
            0o644,
            dynamic_elf(EM_AARCH64, None, &["libgone.so.1"], Some("libseccomp.so.2")),
        )
        .unwrap();
        t.file(
            "usr/bin/crun",
            0o755,
            dynamic_elf(
                EM_AARCH64,
                Some(LOADER),
                &["libseccomp.so.2", "libc.so.6"],
                None,
            ),
        )
        .unwrap();
        let err = check_loadable(&t, &["usr/bin/etcd".into(), "usr/bin/crun".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "/usr/lib/aarch64-linux-gnu/libseccomp.so.2 (loaded for /usr/bin/crun): needs the shared library `libgone.so.1`"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_missing_interpreter_or_foreign_library_is_refused() {
        let mut t = glibc_tree(true);
        t.file(
            "usr/bin/musl",
            0o755,
            dynamic_elf(EM_AARCH64, Some("/lib/ld-musl-aarch64.so.1"), &[], None),
        )
        .unwrap();
        let err = check_loadable(&t, &["usr/bin/musl".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "/usr/bin/musl: needs the program interpreter `/lib/ld-musl-aarch64.so.1`"
            ),
            "{err}"
        );

        let mut t = glibc_tree(false);
        t.file(
            "lib/aarch64-linux-gnu/libc.so.6",
            0o644,
            dynamic_elf(EM_X86_64, None, &[], Some("libc.so.6")),
        )
        .unwrap();
        let err = check_loadable(&t, &["usr/bin/etcd".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/lib/aarch64-linux-gnu/libc.so.6: ") && err.contains("not aarch64"),
            "{err}"
        );

        let err = check_loadable(&t, &["usr/bin/nothing".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/usr/bin/nothing"), "{err}");
    }

    #[test]
    fn dummy_passes_and_others_fail() {
        let p = Path::new("bramble-init");
        check_aarch64_static(p, &dummy_aarch64_executable()).unwrap();

        let err = check_aarch64_static(p, b"#!/bin/sh\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bramble-init: not an ELF"), "{err}");

        // The host's own test binary is x86_64 (or at least not a static aarch64 one).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        if cfg!(not(target_arch = "aarch64")) {
            let err = check_aarch64_static(p, &me).unwrap_err().to_string();
            assert!(err.contains("not aarch64"), "{err}");
        }

        // A relocatable object (.ko-like) is not an executable.
        let ko = crate::modules::tests::fake_ko("x", &[], &[], None);
        let err = check_aarch64_static(p, &ko).unwrap_err().to_string();
        assert!(err.contains("not an executable"), "{err}");
    }
}

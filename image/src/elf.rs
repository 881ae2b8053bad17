//! Checking that the node's binaries are static aarch64 executables.

use std::path::Path;

use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::{Architecture, Endianness, Object, ObjectKind};

use crate::error::{Error, Result};

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
mod tests {
    use super::*;

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

//! The volume label of a FAT boot sector: how PID 1 recognises the boot
//! partition ([`BOOT_LABEL`](crate::BOOT_LABEL)) without mounting anything.

/// The label of the FAT file system whose first sector is `sector` (the FAT32
/// layout first, then FAT12/16), trailing spaces removed; `None` when the
/// sector is not a FAT boot sector.
pub fn volume_label(sector: &[u8]) -> Option<String> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let pick = |at: usize, fs_type_at: usize| -> Option<String> {
        sector
            .get(fs_type_at..fs_type_at + 3)
            .filter(|t| *t == b"FAT")?;
        let label = std::str::from_utf8(sector.get(at..at + 11)?)
            .ok()?
            .trim_end();
        Some(label.to_owned())
    };
    pick(0x47, 0x52).or_else(|| pick(0x2B, 0x36))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fat32_and_fat16_labels() {
        let mut boot = vec![0u8; 512];
        boot[0x47..0x52].copy_from_slice(b"BRAMBLE    ");
        boot[0x52..0x5A].copy_from_slice(b"FAT32   ");
        boot[510] = 0x55;
        boot[511] = 0xAA;
        assert_eq!(volume_label(&boot).as_deref(), Some(crate::BOOT_LABEL));
        let mut fat16 = vec![0u8; 512];
        fat16[0x2B..0x36].copy_from_slice(b"OTHER      ");
        fat16[0x36..0x3E].copy_from_slice(b"FAT16   ");
        fat16[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(volume_label(&fat16).as_deref(), Some("OTHER"));
        // No signature, or no FAT type string: not a FAT boot sector.
        boot[510] = 0;
        assert_eq!(volume_label(&boot), None);
        fat16[0x36] = b'X';
        assert_eq!(volume_label(&fat16), None);
        assert_eq!(volume_label(&[0u8; 100]), None);
    }
}

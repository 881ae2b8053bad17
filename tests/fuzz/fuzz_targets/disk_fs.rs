//! The filesystem readers PID 1 finds partitions with: an ext4 superblock
//! (the input's first 1024 bytes, and as a filesystem image) and a FAT
//! boot sector's volume label.
#![no_main]

use std::io::Cursor;

use bramble_disk::{ext4, fat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(sb) = data.first_chunk::<1024>()
        && let Ok(sb) = ext4::parse(sb)
    {
        assert!(sb.block_size.is_power_of_two() && sb.block_size >= 1024);
        assert!(sb.label.len() <= 3 * 16);
        let _ = sb.size_bytes();
    }
    let _ = ext4::read(&mut Cursor::new(data), 0);
    if let Some(label) = fat::volume_label(data) {
        assert!(label.len() <= 11);
    }
});

//! The MBR and its EBR chain, read from a small disk image (the input's
//! whole sectors), and growing its last logical partition as PID 1 does on
//! a bigger card (the disk's size from the input's last 8 bytes). A grown
//! table stays inside the image, still parses, with the same partitions and
//! the new length, and does not grow twice.
#![no_main]

use std::io::{self, Cursor};

use bramble_disk::mbr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = data.len() / 512 * 512;
    let (image, tail) = data.split_at(whole);
    let read = |lba: u64| -> io::Result<[u8; 512]> {
        let at = usize::try_from(lba).ok().and_then(|l| l.checked_mul(512));
        at.and_then(|at| image.get(at..at + 512))
            .map(|s| s.try_into().expect("512 bytes"))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    };
    let before = mbr::parse_partitions(read);

    let disk_sectors = match tail.len() {
        8.. => u64::from_le_bytes(tail[tail.len() - 8..].try_into().expect("8 bytes")),
        _ => (whole as u64 / 512) * 64,
    };
    let mut disk = Cursor::new(image.to_vec());
    if let Ok(Some(grown)) = mbr::grow_last_logical(&mut disk, disk_sectors) {
        let before = before.expect("a table that grew parsed before");
        assert!(grown.new_sectors > grown.old_sectors);
        assert_eq!(
            disk.get_ref().len(),
            image.len(),
            "growing wrote outside the image"
        );
        let after = mbr::read_partitions(&mut disk).expect("a grown table parses");
        assert_eq!(after.len(), before.len());
        let p = after
            .iter()
            .find(|p| p.index == grown.partition)
            .expect("the grown partition is in the table");
        assert_eq!(p.sectors, grown.new_sectors);
        assert!(p.end_lba() <= disk_sectors);
        assert_eq!(
            mbr::grow_last_logical(&mut disk, disk_sectors).ok(),
            Some(None)
        );
    }
});

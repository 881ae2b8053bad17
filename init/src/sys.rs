//! The few kernel interfaces PID 1 needs that have no safe wrapper: block
//! device and ext4 ioctls. Each call passes a borrowed, open descriptor and,
//! where there is an argument, a pointer to a live local.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

// BLKRRPART = _IO(0x12, 95): re-read the partition table.
nix::ioctl_none!(blkrrpart, 0x12, 95);
// EXT4_IOC_RESIZE_FS = _IOW('f', 16, __u64): grow a mounted ext4 filesystem.
nix::ioctl_write_ptr!(ext4_ioc_resize_fs, b'f', 16, u64);

/// Asks the kernel to re-read the partition table of a whole-disk device.
pub fn reread_partitions(disk: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: BLKRRPART takes no argument; `disk` is an open descriptor for
    // the lifetime of the call.
    unsafe { blkrrpart(disk.as_raw_fd()) }.map(drop)
}

/// Grows the ext4 filesystem mounted at the directory `dir` to `blocks`.
pub fn ext4_resize(dir: BorrowedFd<'_>, blocks: u64) -> nix::Result<()> {
    // SAFETY: the kernel reads one u64 through the pointer, which points at a
    // local that outlives the call; `dir` is open for the call's duration.
    unsafe { ext4_ioc_resize_fs(dir.as_raw_fd(), &blocks) }.map(drop)
}

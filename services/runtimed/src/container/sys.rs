//! The unsafe calls of the container module, each one small:
//!
//! - restoring SIGPIPE's default disposition in the container's init just
//!   before it executes the workload's program. The Rust runtime sets
//!   SIGPIPE to "ignore" in every Rust program (so the shim has it ignored),
//!   and an ignored signal stays ignored across `execve`; without this, every
//!   container would start with SIGPIPE ignored, unlike under any other
//!   runtime;
//! - `bpf(2)`, to load the device policy's program and attach it to a
//!   container's cgroup (`devices`): neither nix nor rustix wraps it.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::signal::{SigHandler, Signal, signal};

use super::devices::Insn;

/// Sets SIGPIPE back to its default action (terminate).
pub(super) fn default_sigpipe() -> nix::Result<()> {
    // SAFETY: SIG_DFL is not a handler function, so no code of ours can run
    // in signal context; this only changes how the kernel treats SIGPIPE in
    // this process, which is single-threaded (a clone made by libcontainer)
    // and about to call execve.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Programs of this cgroup and its ancestors all run; all must allow.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` member of `union bpf_attr`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// `bpf(cmd, attr, sizeof *attr)`.
///
/// # Safety
/// `attr` must be the `bpf_attr` member for `cmd`, and every pointer in it
/// must point to memory that stays valid and is large enough for the call.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; its size is passed with it, and
    // the kernel reads (and for some commands writes) only that many bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<c_void>(),
            size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program; on the verifier's refusal
/// the error carries its log.
pub(super) fn load_device_program(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"bramble_devcg");
    let load = |log: Option<&mut [u8]>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: u32::try_from(insns.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..ProgLoadAttr::default()
        };
        if let Some(log) = log {
            attr.log_level = 1;
            attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        // SAFETY: `attr` is BPF_PROG_LOAD's member; `insns`, `license` and
        // `log` are borrowed for the whole call, and `insn_cnt` and
        // `log_size` are their lengths.
        let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
        let fd = i32::try_from(fd).map_err(|_| io::ErrorKind::InvalidData)?;
        // SAFETY: on success BPF_PROG_LOAD returns a new descriptor that
        // nothing else owns.
        Ok::<_, io::Error>(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    load(None).or_else(|first| {
        // Again, with the verifier's log for the error message.
        let mut log = vec![0u8; 64 * 1024];
        match load(Some(&mut log)) {
            Ok(fd) => Ok(fd),
            Err(_) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                Err(io::Error::new(
                    first.kind(),
                    format!("{first}; verifier: {}", text.trim()),
                ))
            }
        }
    })
}

/// Attaches a loaded device program to the cgroup open as `cgroup`.
pub(super) fn attach_device_program(cgroup: &File, prog: &OwnedFd) -> io::Result<()> {
    let fd =
        |raw: i32| u32::try_from(raw).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let mut attr = ProgAttachAttr {
        target_fd: fd(cgroup.as_raw_fd())?,
        attach_bpf_fd: fd(prog.as_raw_fd())?,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is BPF_PROG_ATTACH's member and holds no pointers; both
    // descriptors are open for the whole call.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

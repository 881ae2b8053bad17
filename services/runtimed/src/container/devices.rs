//! The device policy of every container: which device nodes it may open or
//! create, enforced by the kernel through cgroup v2's device controller.
//!
//! cgroup v2 has no `devices.allow` file: the controller is an eBPF program
//! of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup,
//! which the kernel runs on every `open`/`mknod` of a device node by a
//! process in it. libcontainer can attach one only with its
//! `cgroupsv2_devices` feature, which links the C libbpf; this module writes
//! the few instructions itself ([`program`]) and loads and attaches them with
//! two `bpf(2)` calls (`sys`). The shim attaches it after libcontainer has
//! created the container (its `/dev` is populated, its init waits in the
//! cgroup) and before the workload's program runs.
//!
//! Allowed: [`ALLOWED`], the devices a container's `/dev` holds (null, zero,
//! full, random, urandom, tty, ptmx and the pseudo-terminals of its own
//! devpts). Everything else, the node's disks first, is refused with
//! `EPERM`, whatever the capabilities or the device node (one made with
//! `CAP_MKNOD`, or shipped in an image layer).

use std::fs::File;
use std::path::Path;

use super::ContainerError;
use super::sys;

/// What a process asks of a device node (`BPF_DEVCG_ACC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u32);

impl Access {
    /// Creating the node (`mknod`).
    pub const MKNOD: Access = Access(1);
    /// Opening it for reading.
    pub const READ: Access = Access(2);
    /// Opening it for writing.
    pub const WRITE: Access = Access(4);
    /// All three (`rwm`).
    pub const ALL: Access = Access(7);

    /// Whether every right in `other` is in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Block or character device (`BPF_DEVCG_DEV_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A block device (disks, partitions, loop devices).
    Block = 1,
    /// A character device.
    Char = 2,
}

/// One allowed device: kind, major and minor (`None`: any), access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Block or character.
    pub kind: Kind,
    /// Major number; `None` for any.
    pub major: Option<u32>,
    /// Minor number; `None` for any.
    pub minor: Option<u32>,
    /// What is allowed on it.
    pub access: Access,
}

const fn chr(major: u32, minor: Option<u32>) -> Rule {
    Rule {
        kind: Kind::Char,
        major: Some(major),
        minor,
        access: Access::ALL,
    }
}

/// The devices every container may use (runc's and containerd's defaults,
/// less `tun` and the wildcard `mknod`).
pub const ALLOWED: [Rule; 8] = [
    chr(1, Some(3)), // null
    chr(1, Some(5)), // zero
    chr(1, Some(7)), // full
    chr(1, Some(8)), // random
    chr(1, Some(9)), // urandom
    chr(5, Some(0)), // tty
    chr(5, Some(2)), // ptmx
    chr(136, None),  // pts/N
];

/// One eBPF instruction (`struct bpf_insn`): opcode, registers (destination
/// in the low nibble: the layout of the little-endian machines Bramble runs
/// and builds on), offset, immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU64_AND_K: u8 = 0x57; // dst &= imm
const ALU64_RSH_K: u8 = 0x77; // dst >>= imm
const ALU64_MOV_K: u8 = 0xb7; // dst = imm
const ALU64_MOV_X: u8 = 0xbf; // dst = src
const JMP_JNE_K: u8 = 0x55; // if dst != imm goto pc + 1 + off
const JMP_JNE_X: u8 = 0x5d; // if dst != src goto pc + 1 + off
const JMP_EXIT: u8 = 0x95;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The program for `rules`: returns 1 (allow) when a request matches one of
/// them, 0 (refuse) otherwise.
///
/// The context (`struct bpf_cgroup_dev_ctx`) is `access_type` (the kind in
/// the low 16 bits, the access asked for above them), `major`, `minor`, each
/// a `u32`. A rule matches when the kind is its kind, every access asked for
/// is among its accesses, and the numbers are its numbers (or it has none).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),        // r2 = access_type
        insn(ALU64_AND_K, 2, 0, 0, 0xffff), // r2 = kind
        insn(LDX_MEM_W, 3, 1, 0, 0),        // r3 = access_type
        insn(ALU64_RSH_K, 3, 0, 0, 16),     // r3 = access asked for
        insn(LDX_MEM_W, 4, 1, 4, 0),        // r4 = major
        insn(LDX_MEM_W, 5, 1, 8, 0),        // r5 = minor
    ];
    for rule in rules {
        let mut block = vec![
            // Each jump's offset is patched below to the block's end.
            insn(JMP_JNE_K, 2, 0, 0, rule.kind as i32),
            insn(ALU64_MOV_X, 1, 3, 0, 0),
            insn(ALU64_AND_K, 1, 0, 0, rule.access.0 as i32),
            insn(JMP_JNE_X, 1, 3, 0, 0),
        ];
        if let Some(major) = rule.major {
            block.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if matches!(ins.code, JMP_JNE_K | JMP_JNE_X) {
                // The next block starts at `len`; a jump lands at i + 1 + off.
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// Loads the program for [`ALLOWED`] and attaches it to the cgroup at
/// `cgroup_dir`. Once this returns, every process in the cgroup is held to
/// the policy; the program goes away with the cgroup.
pub fn restrict(cgroup_dir: &Path) -> Result<(), ContainerError> {
    let failed = |what: &str, e: std::io::Error| ContainerError::Cgroup {
        path: cgroup_dir.to_owned(),
        reason: format!("cannot restrict its devices: {what}: {e}"),
    };
    let cgroup = File::open(cgroup_dir).map_err(|e| failed("opening it", e))?;
    let prog = sys::load_device_program(&program(&ALLOWED))
        .map_err(|e| failed("loading the eBPF device program", e))?;
    sys::attach_device_program(&cgroup, &prog)
        .map_err(|e| failed("attaching the eBPF device program", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`program`] decides for one request, computed by running its
    /// instructions the way the kernel would: for tests of the generator against
    /// the rules, without a kernel.
    fn evaluate(program: &[Insn], kind: Kind, access: Access, major: u32, minor: u32) -> bool {
        let ctx = [(access.0 << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        // A program without loops ends within its length.
        for _ in 0..=program.len() {
            let i = program[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            let imm = i64::from(i.imm) as u64;
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                ALU64_AND_K => r[dst] &= imm,
                ALU64_RSH_K => r[dst] >>= imm,
                ALU64_MOV_K => r[dst] = imm,
                ALU64_MOV_X => r[dst] = r[src],
                JMP_JNE_K if r[dst] != imm => pc += i.off as usize,
                JMP_JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JMP_JNE_K | JMP_JNE_X => {}
                JMP_EXIT => return r[0] == 1,
                other => panic!("opcode {other:#04x} is not one the generator writes"),
            }
        }
        panic!("the program did not exit");
    }

    #[test]
    fn allows_the_default_devices_and_nothing_else() {
        let p = program(&ALLOWED);
        let ok = |kind, access, major, minor| evaluate(&p, kind, access, major, minor);
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)] {
            assert!(
                ok(Kind::Char, Access::READ, major, minor),
                "{major}:{minor}"
            );
            assert!(
                ok(Kind::Char, Access(6), major, minor),
                "{major}:{minor} rw"
            );
        }
        assert!(ok(Kind::Char, Access::WRITE, 136, 0));
        assert!(ok(Kind::Char, Access::READ, 136, 4711));
        // The node's disks: SD card, virtio, SCSI, loop.
        for (major, minor) in [(179, 0), (254, 0), (8, 0), (7, 0)] {
            assert!(
                !ok(Kind::Block, Access::READ, major, minor),
                "b {major}:{minor}"
            );
            assert!(!ok(Kind::Block, Access::MKNOD, major, minor));
        }
        // A block device with the numbers of an allowed character device.
        assert!(!ok(Kind::Block, Access::READ, 1, 3));
        // Character devices beyond the list: mem, kmsg, tun, the console.
        for (major, minor) in [(1, 1), (1, 11), (10, 200), (5, 1), (4, 0)] {
            assert!(
                !ok(Kind::Char, Access::READ, major, minor),
                "c {major}:{minor}"
            );
        }
    }

    #[test]
    fn asked_access_must_be_within_the_rule() {
        let read_only = [Rule {
            kind: Kind::Char,
            major: Some(1),
            minor: None,
            access: Access::READ,
        }];
        let p = program(&read_only);
        assert!(evaluate(&p, Kind::Char, Access::READ, 1, 42));
        assert!(!evaluate(&p, Kind::Char, Access::WRITE, 1, 42));
        assert!(!evaluate(&p, Kind::Char, Access(6), 1, 42));
        assert!(!evaluate(&p, Kind::Char, Access::MKNOD, 1, 42));
        assert!(!evaluate(&p, Kind::Char, Access::READ, 2, 42));
        // No rules: nothing allowed.
        assert!(!evaluate(&program(&[]), Kind::Char, Access::READ, 1, 3));
    }

    #[test]
    fn jumps_land_on_the_next_rule() {
        let p = program(&ALLOWED);
        // 6 loads, then per rule 4 checks + numbers + 2, then 2.
        let per_rule: usize = ALLOWED
            .iter()
            .map(|r| 6 + usize::from(r.major.is_some()) + usize::from(r.minor.is_some()))
            .sum();
        assert_eq!(p.len(), 6 + per_rule + 2);
        for (pc, i) in p.iter().enumerate() {
            if matches!(i.code, JMP_JNE_K | JMP_JNE_X) {
                let target = pc + 1 + i.off as usize;
                assert!(target < p.len(), "jump at {pc} leaves the program");
                // Every jump lands on a rule's first check or the final refusal.
                assert!(
                    p[target].code == JMP_JNE_K && p[target].regs & 0xf == 2
                        || target == p.len() - 2,
                    "jump at {pc} lands at {target}"
                );
            }
        }
    }
}

//! The system-call filter of every container (`seccomp`), unless its
//! workload asks for `seccomp: unconfined`.
//!
//! libcontainer installs a spec's `linux.seccomp` only with its `libseccomp`
//! feature (the C library, not linked into the static node binary). Bramble
//! compiles its filter with `seccompiler` (pure Rust, firecracker's) and the
//! shim's executor installs it in the container's init, after libcontainer
//! has dropped the capabilities and set `no_new_privs`, just before the
//! workload's program is executed; every process of the container inherits
//! it.
//!
//! The filter refuses, with `EPERM`, what containerd's default profile
//! refuses to a container without extra capabilities and what a workload has
//! no business calling: the kernel keyrings, eBPF, perf events, userfaultfd,
//! kexec, module loading, file handles (`open_by_handle_at` walks out of
//! any mount), io_uring, `lookup_dcookie`, `quotactl`, and, unless the
//! workload was given `CAP_SYS_ADMIN`, new namespaces (`unshare`, `setns`,
//! `clone` with a `CLONE_NEW*` flag, so no user namespace) and mounts.
//! `clone3`, whose flags a filter cannot read, fails with `ENOSYS`, so the C
//! libraries fall back to `clone`. It is a list of refusals over an
//! otherwise open table, not containerd's list of permissions: system calls
//! Linux adds later are allowed until named here.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Annotation carrying the workload's profile (`runtime-default` or
/// `unconfined`) from the spec to the shim's executor.
pub const ANNOTATION: &str = "org.bramble.seccomp";
/// The annotation's value for no filter.
pub const UNCONFINED: &str = "unconfined";
/// The annotation's value for the runtime's filter.
pub const RUNTIME_DEFAULT: &str = "runtime-default";

/// `kexec_file_load`: the libc crate names it for glibc, not for musl on
/// aarch64 (where the generic table gives it 294).
#[cfg(target_arch = "aarch64")]
const SYS_KEXEC_FILE_LOAD: i64 = 294;
#[cfg(not(target_arch = "aarch64"))]
const SYS_KEXEC_FILE_LOAD: i64 = libc::SYS_kexec_file_load;

/// Refused whatever the capabilities (name, number).
pub(crate) const ALWAYS_REFUSED: &[(&str, i64)] = &[
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("keyctl", libc::SYS_keyctl),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", SYS_KEXEC_FILE_LOAD),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("quotactl", libc::SYS_quotactl),
    ("nfsservctl", libc::SYS_nfsservctl),
];

/// Refused unless the workload has `CAP_SYS_ADMIN`: namespaces and mounts
/// (name, number).
pub(crate) const NEEDS_SYS_ADMIN: &[(&str, i64)] = &[
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
];

/// The `clone` flags that make a new namespace.
pub(crate) const CLONE_NEW_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("no seccomp filter for {}: {e}", std::env::consts::ARCH))
}

/// The filters for a container; `sys_admin`: whether it has
/// `CAP_SYS_ADMIN`. Two programs, both installed: the refusals (`EPERM`)
/// and `clone3` (`ENOSYS`).
pub fn filters(sys_admin: bool) -> Result<Vec<BpfProgram>, String> {
    let arch = arch()?;
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = ALWAYS_REFUSED
        .iter()
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    if !sys_admin {
        refused.extend(NEEDS_SYS_ADMIN.iter().map(|&(_, nr)| (nr, Vec::new())));
        // clone's flags are its first argument on both architectures.
        let rules = CLONE_NEW_FLAGS
            .iter()
            .map(|&flag| {
                let flag = u64::from(flag.unsigned_abs());
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )
                .and_then(|c| SeccompRule::new(vec![c]))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("building the clone rule: {e}"))?;
        refused.insert(libc::SYS_clone, rules);
    }
    let eperm = SeccompAction::Errno(libc::EPERM.unsigned_abs());
    let refusals = SeccompFilter::new(refused, SeccompAction::Allow, eperm, arch)
        .map_err(|e| format!("building the seccomp filter: {e}"))?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS.unsigned_abs()),
        arch,
    )
    .map_err(|e| format!("building the clone3 filter: {e}"))?;
    [refusals, clone3]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(|e| format!("compiling the seccomp filter: {e}")))
        .collect()
}

/// Installs `programs` on the calling thread (the container's init, which
/// is single-threaded; its children inherit them).
pub fn install(programs: &[BpfProgram]) -> Result<(), String> {
    for program in programs {
        seccompiler::apply_filter(program)
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_architecture() {
        let confined = filters(false).unwrap();
        let admin = filters(true).unwrap();
        assert_eq!((confined.len(), admin.len()), (2, 2));
        // The namespace and mount refusals make the first program longer.
        assert!(
            confined[0].len() > admin[0].len(),
            "{} <= {}",
            confined[0].len(),
            admin[0].len()
        );
    }
}

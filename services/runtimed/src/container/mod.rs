//! Containers: OCI runtime specs, the single-threaded shim that runs one container, cgroup readings.
//!
//! - [`spec`]: [`build_spec`] turns a workload and its image's configuration
//!   into the OCI runtime spec (`config.json`) of its container.
//! - [`shim`]: `bramble-runtimed shim`, the single-threaded parent of one
//!   container ([`shim::run`]), and the reports it leaves for the daemon.
//! - [`devices`]: the device policy (an eBPF program on the container's
//!   cgroup) that keeps containers off the node's disks.
//! - [`seccomp`]: the system-call filter the shim installs in a container's
//!   init.
//! - [`cgroup`]: usage readings of a container's cgroup and the preparation
//!   of the cgroup that holds them all.

pub mod cgroup;
pub mod devices;
mod error;
pub mod seccomp;
pub mod shim;
pub mod spec;
mod sys;

pub use cgroup::{
    CGROUP_ROOT, CgroupStats, cgroup_dir, kill_all, oom_kills, prepare_cgroup_parent, read_stats,
};
pub use error::ContainerError;
pub use shim::{ExitReport, ShimArgs, StartedReport, read_exit, read_started};
pub use spec::{
    DEFAULT_CAPABILITIES, NODE_HOSTS, NODE_RESOLV_CONF, STOP_SIGNAL_ANNOTATION, SpecInput,
    build_spec, parse_signal, write_config,
};

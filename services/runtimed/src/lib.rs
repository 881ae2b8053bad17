//! The node's container runtime daemon (`/usr/bin/runtimed`).
//!
//! It keeps the machine configuration's `machine.workloads` running on
//! youki's libcontainer (cgroups v2), with images from the node's store
//! (`bramble-oci-store`: registry pulls, archive imports, layer snapshots), and
//! serves `bramble.runtime.v1.Runtime` to `apid` on a Unix socket.
//!
//! Processes: the daemon is an async (tokio) process and never creates a
//! container itself, since libcontainer forks. Each container gets a shim,
//! the same binary run as `runtimed shim`: single-threaded, it creates and
//! starts the container, is its parent and only reaper, stops it on SIGTERM
//! (grace period, then SIGKILL), and leaves an exit report. The container's
//! stdout and stderr are the shim's, which are pipes the daemon reads into
//! each container's log.
//!
//! Module map: `daemon` (life cycle, configuration), `workloads` (one task
//! per workload: pull, root, shim, restart policy), `rootfs` (overlay
//! mounts), `logs` (captured output), `ports` (published ports of
//! containers in their own network namespaces), `server` (the API),
//! `container` (OCI spec, shim, cgroup readings).

#[cfg(feature = "compare")]
pub mod compare;
pub mod container;
pub mod daemon;
pub mod error;
pub mod logs;
pub mod ports;
pub mod rootfs;
pub mod server;
pub mod workloads;

//! The parts of PID 1 that need neither a kernel nor a disk, as a library
//! so the fuzz targets (`tests/fuzz/`) can reach them: matching modaliases
//! against `modules.alias` patterns. The `bramble-init` binary uses them
//! from here.

pub mod alias;

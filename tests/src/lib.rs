//! QEMU boot harness, boot tests and benchmarks.

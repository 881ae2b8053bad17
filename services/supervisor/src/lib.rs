//! Single-threaded service supervisor used by PID 1.

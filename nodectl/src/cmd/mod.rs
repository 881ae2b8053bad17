//! The subcommands.

pub mod version;

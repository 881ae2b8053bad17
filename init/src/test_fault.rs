//! Faults the boot tests inject through the kernel command line.
//!
//! `bramble.test_fault=<name>` (a whole word) makes PID 1 misbehave at one
//! chosen point, so that a test in QEMU proves what the node does when that
//! happens on a real card. Nothing else reads the switch; an unknown name is
//! ignored with a warning.
//!
//! - `panic-after-ready`: PID 1 panics once the API is ready
//!   ([`crate::panic`]).
//! - `cut-mid-grow`: the first boot's growth of the data partition stops
//!   after its first table write reached the disk, and PID 1 holds there,
//!   saying so, for the test to cut the power.

use std::io::{self, Read, Seek, SeekFrom, Write};

use bramble_disk::mbr::Durable;

/// The kernel command-line parameter.
const PARAM: &str = "bramble.test_fault=";

/// A fault a test asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestFault {
    PanicAfterReady,
    CutMidGrow,
}

impl TestFault {
    /// The name after `bramble.test_fault=`.
    pub fn name(self) -> &'static str {
        match self {
            TestFault::PanicAfterReady => "panic-after-ready",
            TestFault::CutMidGrow => "cut-mid-grow",
        }
    }

    /// The fault `cmdline` asks for, if any.
    pub fn requested(cmdline: &str) -> Option<TestFault> {
        let name = cmdline
            .split_whitespace()
            .find_map(|arg| arg.strip_prefix(PARAM))?;
        let fault = [TestFault::PanicAfterReady, TestFault::CutMidGrow]
            .into_iter()
            .find(|f| f.name() == name);
        if fault.is_none() {
            tracing::warn!("unknown test fault {PARAM}{name}: ignored");
        }
        fault
    }
}

impl std::fmt::Display for TestFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PARAM}{}", self.name())
    }
}

/// A disk whose writer stops for good once `syncs` writes reached the medium:
/// PID 1 holds there, as if the power went while the next write was due.
pub struct HoldAfterSyncs<D> {
    disk: D,
    syncs: usize,
}

impl<D> HoldAfterSyncs<D> {
    pub fn new(disk: D, syncs: usize) -> Self {
        HoldAfterSyncs { disk, syncs }
    }
}

impl<D: Read> Read for HoldAfterSyncs<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.disk.read(buf)
    }
}

impl<D: Seek> Seek for HoldAfterSyncs<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.disk.seek(pos)
    }
}

impl<D: Write> Write for HoldAfterSyncs<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.disk.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.disk.flush()
    }
}

impl<D: Durable> Durable for HoldAfterSyncs<D> {
    fn sync(&mut self) -> io::Result<()> {
        self.disk.sync()?;
        self.syncs = self.syncs.saturating_sub(1);
        if self.syncs == 0 {
            crate::hold::forever(&format!(
                "{}: held after a write reached the disk; cut the power now",
                TestFault::CutMidGrow
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_is_a_whole_word_with_a_known_name() {
        assert_eq!(
            TestFault::requested("console=ttyAMA0 bramble.test_fault=panic-after-ready quiet"),
            Some(TestFault::PanicAfterReady)
        );
        assert_eq!(
            TestFault::requested("bramble.test_fault=cut-mid-grow"),
            Some(TestFault::CutMidGrow)
        );
        assert_eq!(TestFault::requested("console=ttyAMA0 bramble.slot=A"), None);
        assert_eq!(
            TestFault::requested("xbramble.test_fault=panic-after-ready"),
            None
        );
        assert_eq!(
            TestFault::requested("bramble.test_fault=panic-after-ready-later"),
            None
        );
        assert_eq!(
            TestFault::PanicAfterReady.to_string(),
            "bramble.test_fault=panic-after-ready"
        );
    }
}

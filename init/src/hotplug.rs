//! Drivers for devices that appear after boot: a USB network adapter found
//! by the hub after coldplug (a Pi 3's Ethernet sits behind its USB hub and
//! enumerates asynchronously), a PHY on a freshly registered MDIO bus, a
//! device plugged in later. PID 1 listens to the kernel's uevents (no udev)
//! and loads the modules matching each new device's `MODALIAS`.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvfrom, socket,
};

use crate::modules::Database;

/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;

/// Opens a non-blocking socket subscribed to the kernel's uevents. Events
/// are queued from here on, so opening it before a coldplug pass means no
/// device falls between the pass and the first read.
pub fn open() -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
    Ok(fd)
}

/// Whether a uevent came from the kernel: netlink port 0. Processes have
/// their own port IDs (udev's relayed events also carry a `libudev` header,
/// which [`added_modalias`] does not accept either).
pub fn from_kernel(sender: Option<&NetlinkAddr>) -> bool {
    sender.is_some_and(|a| a.pid() == 0)
}

/// The `MODALIAS` of an `add` uevent (`add@/devices/...\0ACTION=add\0...`).
pub fn added_modalias(msg: &[u8]) -> Option<&str> {
    let mut action = None;
    let mut modalias = None;
    for field in msg.split(|&b| b == 0) {
        if let Some(v) = field.strip_prefix(b"ACTION=") {
            action = Some(v);
        } else if let Some(v) = field.strip_prefix(b"MODALIAS=") {
            modalias = std::str::from_utf8(v).ok();
        }
    }
    match action {
        Some(b"add") => modalias.filter(|m| !m.is_empty()),
        _ => None,
    }
}

/// Reads every pending uevent and loads the modules for new devices;
/// returns how many it loaded, each announced on the console if `announce`.
/// Errors from a module are reported and do not stop the others; an error
/// of the socket itself is returned.
pub fn drain(fd: BorrowedFd<'_>, db: &mut Database, announce: bool) -> nix::Result<usize> {
    let mut buf = vec![0u8; 8192];
    let mut loaded = 0;
    // Bounded, so a storm of events cannot keep PID 1 from its other work;
    // what is left stays readable for the next turn of the loop.
    for _ in 0..256 {
        let n = match recvfrom::<NetlinkAddr>(fd.as_raw_fd(), &mut buf) {
            Ok((n, sender)) if from_kernel(sender.as_ref()) => n,
            // Another process (with CAP_NET_ADMIN) may send to the group:
            // PID 1 loads modules on the kernel's word only.
            Ok(_) => continue,
            Err(nix::Error::EAGAIN) => break,
            // The kernel dropped events (receive queue full): a coldplug
            // pass finds whatever they announced.
            Err(nix::Error::ENOBUFS) => {
                tracing::warn!("uevents were lost; walking sysfs again");
                loaded += db.coldplug(Path::new("/sys"), 4);
                continue;
            }
            Err(nix::Error::EINTR) => continue,
            Err(err) => return Err(err),
        };
        let Some(modalias) = buf.get(..n).and_then(added_modalias) else {
            continue;
        };
        let modalias = modalias.to_owned();
        for module in db.load_for_device(&modalias) {
            if announce {
                tracing::info!("hotplug: loaded {module} for {modalias}");
            }
            loaded += 1;
        }
    }
    Ok(loaded)
}

/// Coldplug at boot: one pass over `sysfs`, then the devices that the
/// loaded drivers revealed, read from `events` (opened before the pass), until
/// they need no more modules. One walk instead of a walk per generation of
/// devices: a walk costs tens of milliseconds on a slow CPU. Returns how many
/// modules were loaded.
pub fn coldplug(events: BorrowedFd<'_>, db: &mut Database, sysfs: &Path) -> nix::Result<usize> {
    let mut loaded = db.coldplug_once(sysfs);
    // Each round is one generation of devices (PCI, then virtio, then
    // their disks and links); real buses nest a few levels at most.
    for _ in 0..MAX_EVENT_ROUNDS {
        let more = drain(events, db, false)?;
        if more == 0 {
            break;
        }
        loaded += more;
    }
    Ok(loaded)
}

/// Bound on [`coldplug`]'s rounds of uevents.
const MAX_EVENT_ROUNDS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_modalias_of_add_events_only() {
        let add = b"add@/devices/platform/soc/3f980000.usb/usb1/1-1/1-1.1/1-1.1:1.0\0\
                    ACTION=add\0DEVPATH=/devices/x\0SUBSYSTEM=usb\0\
                    MODALIAS=usb:v0525pA4A2d0000dc02dsc00dp00ic02isc06ip00in00\0SEQNUM=812\0";
        assert_eq!(
            added_modalias(add),
            Some("usb:v0525pA4A2d0000dc02dsc00dp00ic02isc06ip00in00")
        );
        let remove = b"remove@/devices/x\0ACTION=remove\0MODALIAS=usb:v1\0";
        assert_eq!(added_modalias(remove), None);
        let bind = b"bind@/devices/x\0ACTION=bind\0MODALIAS=usb:v1\0";
        assert_eq!(added_modalias(bind), None);
        let no_alias = b"add@/devices/virtual/net/lo\0ACTION=add\0SUBSYSTEM=net\0";
        assert_eq!(added_modalias(no_alias), None);
        assert_eq!(added_modalias(b""), None);
        // udev's own relayed format starts with a binary header, no ACTION=.
        assert_eq!(added_modalias(b"libudev\0\xfe\xed\xca\xfe"), None);
    }

    #[test]
    fn only_the_kernel_is_believed() {
        assert!(from_kernel(Some(&NetlinkAddr::new(0, KERNEL_GROUP))));
        assert!(!from_kernel(Some(&NetlinkAddr::new(4242, KERNEL_GROUP))));
        assert!(!from_kernel(None));
    }

    /// A process sending to the uevent group (root may) reaches PID 1's
    /// socket, and is not taken for the kernel.
    #[test]
    fn a_forged_uevent_from_a_process_is_not_the_kernel() {
        use nix::sys::socket::{MsgFlags, sendto};
        bramble_testkit::skip_unless!(
            bramble_testkit::is_root(),
            "sending to the uevent multicast group needs CAP_NET_ADMIN"
        );
        let listener = open().unwrap();
        let forger = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .unwrap();
        let msg = b"add@/devices/x\0ACTION=add\0MODALIAS=forged:v1\0";
        sendto(
            forger.as_raw_fd(),
            msg,
            &NetlinkAddr::new(0, KERNEL_GROUP),
            MsgFlags::empty(),
        )
        .unwrap();
        // Real uevents may arrive too: look for ours among a bounded number.
        let mut buf = [0u8; 8192];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let sender = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the forged uevent never arrived"
            );
            match recvfrom::<NetlinkAddr>(listener.as_raw_fd(), &mut buf) {
                Ok((n, sender)) if &buf[..n] == msg => break sender,
                Ok(_) => {}
                Err(nix::Error::EAGAIN) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert!(!from_kernel(sender.as_ref()), "{sender:?}");
    }
}

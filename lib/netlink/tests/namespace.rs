//! Blocking requests inside a network namespace of the test's own: bring
//! its loopback up from outside, see it up, and come back to the thread's
//! namespace unchanged. Needs root (`unshare(CLONE_NEWNET)`).

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use bramble_netlink::{RequestError, in_namespace, links, route_socket, set_link_up_blocking};
use bramble_testkit::skip_unless;
use rtnetlink::packet_route::link::LinkFlags;

/// A new network namespace, held open by the returned file (the thread that
/// made it has ended).
fn new_namespace() -> std::io::Result<File> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

fn own_namespace() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or_default()
}

/// The flags of `lo` as seen from inside `ns`.
fn loopback_flags(ns: &File) -> LinkFlags {
    in_namespace(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            let found = links(&handle).await.map_err(std::io::Error::other)?;
            Ok(found
                .into_iter()
                .find(|l| l.name == "lo")
                .map(|l| l.flags)
                .unwrap_or_default())
        })
    })
    .expect("links of the namespace")
}

#[test]
fn loopback_of_another_namespace_comes_up_and_the_thread_comes_back() {
    skip_unless!(
        nix::unistd::geteuid().is_root(),
        "needs root to make a network namespace"
    );
    let ns = new_namespace().expect("a network namespace");
    let before = own_namespace();
    assert!(
        !loopback_flags(&ns).contains(LinkFlags::Up),
        "a new namespace's loopback starts down"
    );

    let socket = in_namespace(&ns, || {
        route_socket().map_err(|e| std::io::Error::other(e.to_string()))
    })
    .expect("a socket in the namespace");
    assert_eq!(
        own_namespace(),
        before,
        "the thread is back in its namespace"
    );
    // Used from outside, the socket acts in the namespace it was made in.
    set_link_up_blocking(&socket, 1).expect("loopback up");
    assert!(loopback_flags(&ns).contains(LinkFlags::Up));
    assert_eq!(own_namespace(), before);

    match set_link_up_blocking(&socket, 4242) {
        Err(RequestError::Refused(e)) => {
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENODEV), "{e}")
        }
        other => panic!("a link that does not exist: {other:?}"),
    }
}

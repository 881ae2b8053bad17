//! Published ports, for real: a network namespace the test makes (as a
//! container's would be), a server on its loopback, and runtimed's
//! forwarder on the host's loopback joining the two. Needs root
//! (`unshare(CLONE_NEWNET)`).
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use bramble_config::WorkloadPort;
use bramble_runtimed::ports::Published;
use bramble_testkit::skip_unless;

const LIMIT: Duration = Duration::from_secs(10);

/// A new network namespace with its loopback up, held open by the file.
fn namespace() -> File {
    let ns = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .unwrap()
    .unwrap();
    let socket = bramble_netlink::in_namespace(&ns, || {
        bramble_netlink::route_socket().map_err(std::io::Error::other)
    })
    .unwrap();
    bramble_netlink::set_link_up_blocking(&socket, 1).unwrap();
    ns
}

/// A server on `127.0.0.1` inside `ns` answering each connection with
/// `echo: <first line>`; returns its port.
fn serve_in(ns: &File) -> u16 {
    let listener = bramble_netlink::in_namespace(ns, || TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap_or(0);
            let _ = stream.write_all(b"echo: ");
            let _ = stream.write_all(&buf[..n]);
        }
    });
    port
}

fn exchange(addr: std::net::SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, LIMIT)?;
    stream.set_read_timeout(Some(LIMIT))?;
    stream.write_all(message)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

fn port(container_port: u16) -> WorkloadPort {
    // Host port 0: the kernel picks a free one.
    serde_json::from_value(serde_json::json!({"containerPort": container_port, "hostPort": 0}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_port_reaches_the_namespaces_loopback_and_nothing_else() {
    skip_unless!(
        bramble_testkit::is_root(),
        "needs root to make a network namespace"
    );
    let ns = namespace();
    let inner = serve_in(&ns);
    // The server is on the namespace's loopback, not the host's.
    assert!(
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, inner).into(), LIMIT).is_err(),
        "port {inner} must not be open on the host's loopback"
    );

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut published = Published::bind(&[port(inner), port(1)], loopback)
        .await
        .unwrap();
    let addrs = published.local_addrs();
    assert_eq!(addrs.len(), 2);
    published.serve(ns.try_clone().unwrap()).unwrap();

    let (to_server, to_nothing) = (addrs[0], addrs[1]);
    let answer = tokio::task::spawn_blocking(move || exchange(to_server, b"hello"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"echo: hello");
    // Nothing listens on port 1 in the namespace: the client's connection
    // is closed without an answer.
    let answer = tokio::task::spawn_blocking(move || exchange(to_nothing, b"anyone?"))
        .await
        .unwrap();
    assert!(
        answer.as_deref().map_or(true, <[u8]>::is_empty),
        "{answer:?}"
    );

    // Dropped: the host's port is closed.
    drop(published);
    let closed = tokio::task::spawn_blocking(move || exchange(to_server, b"late"))
        .await
        .unwrap();
    assert!(
        closed.is_err() || closed.as_deref().is_ok_and(<[u8]>::is_empty),
        "{closed:?}"
    );
}

#[tokio::test]
async fn a_port_in_use_and_the_nodes_own_namespace_are_refused() {
    skip_unless!(
        bramble_testkit::is_root(),
        "needs root to read network namespaces"
    );
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let number = taken.local_addr().unwrap().port();
    let busy: WorkloadPort =
        serde_json::from_value(serde_json::json!({"containerPort": 80, "hostPort": number}))
            .unwrap();
    let err = Published::bind(&[busy], IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("cannot publish port {number} (container port 80)")),
        "{err}"
    );

    let mut published = Published::bind(&[port(80)], IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    let own = File::open("/proc/self/ns/net").unwrap();
    let err = published.serve(own).unwrap_err().to_string();
    assert!(err.contains("shares the node's network namespace"), "{err}");
}

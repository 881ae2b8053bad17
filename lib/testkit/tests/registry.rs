//! The registry fixture serves the distribution API and comes back with its
//! content after a restart.

use std::io::{Read, Write};
use std::net::TcpStream;

use bramble_testkit::registry::Registry;

fn get_v2(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the registry");
    s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");
    reply
}

#[test]
fn serves_the_distribution_api_and_restarts() {
    let registry = Registry::start();
    let reply = get_v2(registry.port());
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    let port = registry.port();
    let registry = registry.restart();
    assert_eq!(registry.port(), port);
    assert!(get_v2(port).contains(" 200 "));
}

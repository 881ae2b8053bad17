//! The supervisor's control protocol through its real socket: the input is
//! written by a client as it is (newline-delimited JSON requests, or
//! anything else), the supervisor serves it from its poll loop, and every
//! line it answers is a JSON response. Its one service waits for a
//! condition that never holds, so no request can spawn anything.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown as Direction;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bramble_supervisor::{Options, Response, ServiceDef, Supervisor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = bramble_fuzz::tempdir("bramble-fuzz-control.");
    let socket = dir.path().join("control.sock");
    let mut def = ServiceDef::new("svc", ["/bin/true"]);
    def.conditions = vec![dir.path().join("never")];
    let mut sup = Supervisor::new(
        vec![def],
        Options {
            control_socket: Some(socket.clone()),
            ..Options::default()
        },
    )
    .expect("a supervisor");
    let mut client = UnixStream::connect(&socket).expect("connecting to the control socket");
    client.set_nonblocking(true).expect("non-blocking");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut written = 0;
    let mut write_open = true;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if write_open {
            match client.write(&data[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // The server closed the connection (a request too large).
                Err(_) => written = data.len(),
            }
            if written == data.len() {
                let _ = client.shutdown(Direction::Write);
                write_open = false;
            }
        }
        if sup.step(Duration::from_millis(2)).is_some() {
            break; // a shutdown request, served
        }
        match client.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "the control server neither answered nor closed the connection in 10 s"
        );
    }

    let requests = data.iter().filter(|&&b| b == b'\n').count();
    let mut answers = 0;
    for line in answer.split_inclusive(|&b| b == b'\n') {
        let Some(json) = line.strip_suffix(b"\n") else {
            break; // cut short by a shutdown
        };
        serde_json::from_slice::<Response>(json).unwrap_or_else(|e| {
            panic!(
                "an answer is not a response ({e}): {}",
                String::from_utf8_lossy(json)
            )
        });
        answers += 1;
    }
    // One answer per request line, and one for a last request too large.
    assert!(
        answers <= requests + 1,
        "{answers} answers to {requests} requests"
    );
});

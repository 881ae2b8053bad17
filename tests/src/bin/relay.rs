//! `bramble-relay HOST:PORT`: connects to HOST:PORT and copies standard
//! input to it and its replies to standard output, until either side
//! closes. QEMU's `guestfwd=...-cmd:` runs one per guest connection, which
//! lets a test give the guest a service on the host's loopback while the
//! guest's network stays restricted.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .context("usage: bramble-relay HOST:PORT")?;
    let to_server = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
    to_server.set_nodelay(true).ok();
    let mut from_server = to_server.try_clone().context("cloning the socket")?;
    // Replies: server -> stdout.
    let replies = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n) = from_server.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    // Requests: stdin -> server.
    let mut to_server_w = to_server.try_clone().context("cloning the socket")?;
    let mut input = std::io::stdin().lock();
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = input.read(&mut buf) {
        if n == 0 || to_server_w.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    to_server.shutdown(Shutdown::Write).ok();
    // The server answers what it got, then closes; bounded in case it never does.
    to_server
        .set_read_timeout(Some(Duration::from_secs(300)))
        .ok();
    replies.join().ok();
    Ok(())
}

//! Control socket: the blocking [`Client`] and the server's per-connection state.
//!
//! The server lives inside the supervisor's loop (see [`crate::Supervisor`]);
//! the wire format is described in [`crate::protocol`].

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketType, sockopt};

use crate::error::Error;
use crate::protocol::{
    EventInfo, LogLine, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, Request, Response, ServiceInfo,
    Shutdown,
};

/// A blocking control-socket client with timeouts on connect, read and write.
///
/// Meant for synchronous callers, or async ones through `spawn_blocking`.
/// One connection can carry many requests.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the supervisor socket; `timeout` bounds the connect and
    /// each later read and write.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let err = |source: std::io::Error| Error::Control {
            path: path.clone(),
            source,
        };
        let timeout = timeout.max(Duration::from_millis(1));
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| err(e.into()))?;
        // A Unix-socket connect waits for backlog room using the send timeout.
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))
            .map_err(|e| err(e.into()))?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(timeout))
            .map_err(|e| err(e.into()))?;
        let addr = SocketAddrUnix::new(path.as_path()).map_err(|e| err(e.into()))?;
        rustix::net::connect(&fd, &addr).map_err(|e| err(e.into()))?;
        let stream = UnixStream::from(fd);
        Ok(Self {
            path,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its response (which may have `ok: false`).
    pub fn request(&mut self, req: &Request) -> Result<Response, Error> {
        let err = |source: std::io::Error| Error::Control {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(req).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.reader.get_mut().write_all(&line).map_err(err)?;
        let mut buf = Vec::new();
        let limit = u64::try_from(MAX_RESPONSE_BYTES).unwrap_or(u64::MAX) + 1;
        (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(err)?;
        if buf.last() != Some(&b'\n') {
            return Err(if buf.is_empty() {
                Error::Protocol("connection closed without a response".into())
            } else if buf.len() > MAX_RESPONSE_BYTES {
                Error::Protocol("response too large".into())
            } else {
                Error::Protocol("truncated response".into())
            });
        }
        serde_json::from_slice(&buf).map_err(|e| Error::Protocol(e.to_string()))
    }

    fn checked(&mut self, req: &Request) -> Result<Response, Error> {
        let resp = self.request(req)?;
        if resp.ok {
            Ok(resp)
        } else {
            Err(Error::Remote(
                resp.error.unwrap_or_else(|| "request failed".into()),
            ))
        }
    }

    /// All services.
    pub fn list(&mut self) -> Result<Vec<ServiceInfo>, Error> {
        Ok(self.checked(&Request::List)?.services.unwrap_or_default())
    }

    /// Events after `since`, and the newest sequence number.
    pub fn events(&mut self, since: u64) -> Result<(Vec<EventInfo>, u64), Error> {
        let r = self.checked(&Request::Events { since })?;
        Ok((r.events.unwrap_or_default(), r.last_seq.unwrap_or(since)))
    }

    /// The last `tail` captured lines of a service.
    pub fn logs(&mut self, service: &str, tail: usize) -> Result<Vec<LogLine>, Error> {
        let r = self.checked(&Request::Logs {
            service: service.into(),
            tail: Some(tail),
            after: None,
        })?;
        Ok(r.lines.unwrap_or_default())
    }

    /// At most `max` captured lines of a service numbered above `after`,
    /// oldest first, and the number of its newest line: following asks
    /// with the last number it saw (see [`crate::protocol`]).
    pub fn logs_after(
        &mut self,
        service: &str,
        after: u64,
        max: usize,
    ) -> Result<(Vec<LogLine>, u64), Error> {
        let r = self.checked(&Request::Logs {
            service: service.into(),
            tail: Some(max),
            after: Some(after),
        })?;
        Ok((r.lines.unwrap_or_default(), r.last_seq.unwrap_or(after)))
    }

    /// Starts a service.
    pub fn start(&mut self, service: &str) -> Result<(), Error> {
        self.checked(&Request::Start {
            service: service.into(),
        })
        .map(drop)
    }

    /// Stops a service (after its dependents).
    pub fn stop(&mut self, service: &str) -> Result<(), Error> {
        self.checked(&Request::Stop {
            service: service.into(),
        })
        .map(drop)
    }

    /// Restarts a service.
    pub fn restart(&mut self, service: &str) -> Result<(), Error> {
        self.checked(&Request::Restart {
            service: service.into(),
        })
        .map(drop)
    }

    /// Asks a service to re-read its configuration.
    pub fn reload(&mut self, service: &str) -> Result<(), Error> {
        self.checked(&Request::Reload {
            service: service.into(),
        })
        .map(drop)
    }

    /// Records a node-wide event.
    pub fn note(&mut self, message: &str) -> Result<(), Error> {
        self.checked(&Request::Note {
            message: message.into(),
        })
        .map(drop)
    }

    /// Asks for a shutdown; the supervisor answers before stopping services.
    pub fn shutdown(&mut self, kind: Shutdown) -> Result<(), Error> {
        self.checked(&Request::Shutdown { kind }).map(drop)
    }
}

/// Server side of one connection: non-blocking, bounded buffers.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    pub(crate) last_active: Instant,
    eof: bool,
    close_after_write: bool,
    /// After the final response: input is read and discarded until EOF or
    /// this deadline, so closing does not reset the connection (which could
    /// destroy the response before the client reads it).
    drain_until: Option<Instant>,
    broken: bool,
}

const READ_CHUNK: usize = 4096;
/// How long a connection is drained after its final response.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// Reads per wake-up and connection.
const MAX_READS_PER_WAKE: usize = 4;

pub(crate) enum Line {
    Request(Vec<u8>),
    TooLarge,
}

impl Conn {
    pub(crate) fn new(stream: UnixStream, now: Instant) -> Self {
        Self {
            stream,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            last_active: now,
            eof: false,
            close_after_write: false,
            drain_until: None,
            broken: false,
        }
    }

    /// Whether to poll for input (only when no response is pending, so a
    /// client that does not read its responses cannot make us buffer more).
    pub(crate) fn wants_read(&self) -> bool {
        if self.eof || self.broken || self.has_pending_write() {
            return false;
        }
        self.drain_until.is_some()
            || (!self.close_after_write && self.rbuf.len() <= MAX_REQUEST_BYTES)
    }

    /// When this connection must be looked at even without I/O.
    pub(crate) fn deadline(&self, idle: Duration) -> Instant {
        self.drain_until.unwrap_or(self.last_active + idle)
    }

    /// Idle too long, or drained long enough.
    pub(crate) fn expired(&self, now: Instant, idle: Duration) -> bool {
        now >= self.deadline(idle)
    }

    pub(crate) fn has_pending_write(&self) -> bool {
        self.wpos < self.wbuf.len()
    }

    /// Reads what is available, boundedly.
    pub(crate) fn read_some(&mut self, now: Instant) {
        let mut chunk = [0u8; READ_CHUNK];
        let draining = self.drain_until.is_some();
        for _ in 0..MAX_READS_PER_WAKE * 4 {
            if !draining && (self.rbuf.len() > MAX_REQUEST_BYTES || self.rbuf.contains(&b'\n')) {
                break;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(_) if draining => {}
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    self.last_active = now;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
    }

    /// The next complete request line, if any and if no response is pending.
    pub(crate) fn next_line(&mut self) -> Option<Line> {
        if self.has_pending_write() || self.close_after_write || self.broken {
            return None;
        }
        match self.rbuf.iter().position(|&b| b == b'\n') {
            Some(i) if i <= MAX_REQUEST_BYTES => {
                let mut line: Vec<u8> = self.rbuf.drain(..=i).collect();
                line.pop();
                Some(Line::Request(line))
            }
            Some(_) => Some(Line::TooLarge),
            None if self.rbuf.len() > MAX_REQUEST_BYTES => Some(Line::TooLarge),
            None => None,
        }
    }

    pub(crate) fn queue(&mut self, resp: &Response, close: bool) {
        if !self.has_pending_write() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        match serde_json::to_vec(resp) {
            Ok(v) => self.wbuf.extend_from_slice(&v),
            Err(e) => {
                let fallback = Response::error(format!("cannot encode response: {e}"));
                self.wbuf.extend_from_slice(
                    &serde_json::to_vec(&fallback).unwrap_or_else(|_| b"{\"ok\":false}".to_vec()),
                );
            }
        }
        self.wbuf.push(b'\n');
        if close {
            self.close_after_write = true;
            self.rbuf.clear();
        }
    }

    /// Writes what the socket takes without blocking.
    pub(crate) fn flush(&mut self, now: Instant) {
        while self.has_pending_write() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => {
                    self.broken = true;
                    return;
                }
                Ok(n) => {
                    self.wpos += n;
                    self.last_active = now;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.broken = true;
                    return;
                }
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.close_after_write && self.drain_until.is_none() {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.drain_until = Some(now + DRAIN_TIME);
        }
    }

    pub(crate) fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Done: broken, or finished writing and nothing more will come.
    pub(crate) fn finished(&self) -> bool {
        if self.broken {
            return true;
        }
        if self.has_pending_write() {
            return false;
        }
        if self.close_after_write {
            return self.eof;
        }
        self.eof && !self.rbuf.contains(&b'\n')
    }
}

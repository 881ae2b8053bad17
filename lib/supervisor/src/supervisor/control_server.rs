//! The control socket's server side: the listener (mode 0600, a stale
//! socket replaced), accepting and serving connections inside the loop, and
//! answering requests (see [`crate::protocol`]).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Instant;

use rustix::event::PollFlags;
use tracing::{debug, info, warn};

use super::Supervisor;
use crate::control::{Conn, Line};
use crate::error::Error;
use crate::protocol::{DEFAULT_LOG_TAIL, EventInfo, MAX_LOG_TAIL, Request, Response, ServiceInfo};
use crate::state::{Event, ServiceStatus};

/// Connections accepted per wake-up.
const MAX_ACCEPT_PER_WAKE: usize = 8;
/// Requests handled per connection and wake-up.
const MAX_REQUESTS_PER_WAKE: usize = 8;

pub(super) fn bind_control_socket(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Supervisor {
    pub(super) fn accept(&mut self, now: Instant) {
        for _ in 0..MAX_ACCEPT_PER_WAKE {
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                return;
            };
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.conns[slot] = Some(Conn::new(stream, now));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("control socket accept: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn serve_conn(&mut self, id: usize, flags: PollFlags, now: Instant) {
        let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) else {
            return;
        };
        if flags.intersects(PollFlags::ERR | PollFlags::NVAL) {
            conn.mark_broken();
        }
        if flags.intersects(PollFlags::OUT) {
            conn.flush(now);
        }
        if flags.intersects(PollFlags::IN | PollFlags::HUP) && conn.wants_read() {
            conn.read_some(now);
        }
        for _ in 0..MAX_REQUESTS_PER_WAKE {
            match conn.next_line() {
                Some(Line::Request(line)) => {
                    let resp = self.handle_line(&line);
                    conn.queue(&resp, false);
                    conn.flush(now);
                }
                Some(Line::TooLarge) => {
                    conn.queue(&Response::error("request too large"), true);
                    conn.flush(now);
                }
                None => break,
            }
        }
        if !conn.finished() {
            self.conns[id] = Some(conn);
        }
    }

    fn handle_line(&mut self, line: &[u8]) -> Response {
        match serde_json::from_slice::<Request>(line) {
            Ok(req) => self.handle_request(req),
            Err(e) => Response::error(format!("invalid request: {e}")),
        }
    }

    /// Answers one control request (the socket server uses this; it is public
    /// so a caller may serve requests arriving by other means).
    pub fn handle_request(&mut self, req: Request) -> Response {
        debug!(?req, "control request");
        let done = |r: Result<(), Error>| match r {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(e.to_string()),
        };
        match req {
            Request::List => Response {
                services: Some(self.services().into_iter().map(service_info).collect()),
                ..Response::ok()
            },
            Request::Events { since } => Response {
                events: Some(
                    self.events_since(since)
                        .into_iter()
                        .map(event_info)
                        .collect(),
                ),
                last_seq: Some(self.last_seq()),
                ..Response::ok()
            },
            Request::Logs {
                service,
                tail,
                after,
            } => {
                let n = tail.unwrap_or(DEFAULT_LOG_TAIL).min(MAX_LOG_TAIL);
                let found = self.index.get(&service).map(|&i| {
                    let ring = &self.services[i].ring;
                    let lines = match after {
                        Some(after) => ring.after(after, n),
                        None => ring.tail(n),
                    };
                    (lines, ring.last_seq())
                });
                match found {
                    Some((lines, last)) => Response {
                        lines: Some(lines),
                        last_seq: Some(last),
                        ..Response::ok()
                    },
                    None => Response::error(Error::UnknownService(service).to_string()),
                }
            }
            Request::Start { service } => done(self.start(&service)),
            Request::Stop { service } => done(self.stop(&service)),
            Request::Restart { service } => done(self.restart(&service)),
            Request::Reload { service } => done(self.reload(&service)),
            Request::Shutdown { kind } => {
                self.request_shutdown(kind);
                Response::ok()
            }
            Request::Note { mut message } => {
                if message.len() > MAX_NOTE_BYTES {
                    let mut end = MAX_NOTE_BYTES;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                }
                info!("{message}");
                self.record(None, None, None, message);
                Response::ok()
            }
        }
    }
}

/// Longest message a `note` request keeps.
const MAX_NOTE_BYTES: usize = 1024;

fn service_info(s: ServiceStatus) -> ServiceInfo {
    ServiceInfo {
        name: s.name,
        description: s.description,
        state: s.state.name().to_string(),
        pid: s.pid,
        restarts: s.restarts,
        ready: s.ready,
        last_exit: s.last_exit,
        last_error: s.last_error,
        since: s.since_unix_ms,
        next_restart_in_ms: s
            .next_restart_in
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

fn event_info(e: Event) -> EventInfo {
    EventInfo {
        seq: e.seq,
        time_unix_ms: e.time_unix_ms,
        service: e.service,
        from: e.from.map(|s| s.name().to_string()),
        to: e.to.map(|s| s.name().to_string()),
        message: e.message,
    }
}

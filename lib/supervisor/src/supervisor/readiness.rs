//! The readiness pipe: a `notify_ready` service writes `READY=1` to fd 3
//! (see `bramble_daemon::ready`) and becomes ready.

use rustix::io::Errno;

use super::Supervisor;
use crate::state::ServiceState;

/// Bytes kept of a partial readiness message.
const MAX_READY_BUF: usize = 256;

impl Supervisor {
    pub(super) fn read_ready(&mut self, i: usize) {
        let mut got_ready = false;
        {
            let s = &mut self.services[i];
            let Some(proc) = s.proc.as_mut() else { return };
            let Some(fd) = proc.ready_fd.as_ref() else {
                return;
            };
            let mut buf = [0u8; 128];
            let mut eof = false;
            for _ in 0..4 {
                match rustix::io::read(fd, &mut buf[..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        proc.ready_buf.extend_from_slice(&buf[..n]);
                        while let Some(p) = proc.ready_buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = proc.ready_buf.drain(..=p).collect();
                            if line.trim_ascii() == b"READY=1" {
                                got_ready = true;
                            }
                        }
                        if proc.ready_buf.len() > MAX_READY_BUF {
                            proc.ready_buf.clear();
                        }
                    }
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => {}
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            if eof {
                if proc.ready_buf.trim_ascii() == b"READY=1" {
                    got_ready = true;
                }
                proc.ready_fd = None;
            }
        }
        if got_ready && self.services[i].state == ServiceState::Running {
            self.set_state(i, ServiceState::Ready, "READY=1".into());
        }
    }
}
